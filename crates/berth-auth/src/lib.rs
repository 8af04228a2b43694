//! Who may do what: access scopes, bearer-token verification in every style real issuers use,
//! htpasswd, and Berth's own token issuer with ACL rules. No HTTP and no storage here; the
//! server maps requests to [`scope::Access`]es and asks.

pub mod acl;
pub mod cloudfront;
pub mod federation;
pub mod htpasswd;
pub mod identity;
pub mod issuer;
pub mod keys;
pub mod robot;
pub mod scope;
pub mod signer;
pub mod token;
pub mod trust;
