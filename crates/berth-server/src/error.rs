//! The API's error type is the response: an OCI error JSON body with the status its code
//! maps to (one table, `berth_core::ErrorCode::status`). Client errors are not logged here
//! (the access log line has the status); internal errors are logged once, at ERROR, and the
//! client gets a generic message.

use axum::response::{IntoResponse, Response};
use berth_core::{ErrorCode, OciError};
use berth_registry::RegistryError;
use http::{header, HeaderValue, StatusCode};

#[derive(Debug)]
pub enum ApiError {
    Oci(OciError),
    /// A server-side failure; the message goes to the log, not to the client.
    Internal(String),
}

impl ApiError {
    pub fn code(code: ErrorCode) -> ApiError {
        ApiError::Oci(OciError::new(code))
    }

    pub fn msg(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError::Oci(OciError::with_message(code, message))
    }
}

impl From<OciError> for ApiError {
    fn from(e: OciError) -> Self {
        ApiError::Oci(e)
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Oci(e) => ApiError::Oci(e),
            RegistryError::Body(msg) => ApiError::Oci(OciError::with_message(
                ErrorCode::BlobUploadInvalid,
                format!("request body broke off: {msg}"),
            )),
            RegistryError::Storage(e) if e.is_unavailable() => ApiError::Oci(
                OciError::with_message(ErrorCode::Unavailable, format!("{e}; try again later")),
            ),
            RegistryError::Storage(e) => ApiError::Internal(format!("storage: {e}")),
        }
    }
}

/// The error code of a response, kept as a response extension for the access log.
#[derive(Debug, Clone, Copy)]
pub struct LoggedCode(pub &'static str);

/// Builds the JSON error response for `err`.
pub fn oci_response(err: &OciError) -> Response {
    let status =
        StatusCode::from_u16(err.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = (status, err.body()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.extensions_mut().insert(LoggedCode(err.code.as_str()));
    resp
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Oci(e) => oci_response(&e),
            ApiError::Internal(msg) => {
                tracing::error!(error = %msg, "request failed");
                oci_response(&OciError::with_message(
                    ErrorCode::Unknown,
                    "internal server error",
                ))
            }
        }
    }
}
