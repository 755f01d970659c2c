//! A request the simulated provider does not carry out: its status, its wording, and how it is
//! answered (DRF JSON, a gateway's HTML page, or an [`ApiError`] on the in-memory path).

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::provider::ApiError;

/// A non-success answer, rendered as DRF JSON (or a gateway's HTML page) or as an [`ApiError`].
#[derive(Debug)]
pub(super) struct Refusal {
    status: u16,
    detail: String,
    retry_after: Option<u64>,
    /// Answered by the gateway in front of the app (nginx HTML), not by the app (JSON).
    gateway: bool,
}

impl Refusal {
    pub(super) fn new(status: u16, detail: impl Into<String>) -> Self {
        Self {
            status,
            detail: detail.into(),
            retry_after: None,
            gateway: false,
        }
    }

    pub(super) fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(400, detail)
    }

    pub(super) fn not_found(detail: impl Into<String>) -> Self {
        Self::new(404, detail)
    }

    pub(super) fn throttled(seconds: u64) -> Self {
        let unit = if seconds == 1 { "second" } else { "seconds" };
        Self {
            retry_after: Some(seconds),
            ..Self::new(
                429,
                format!("Request was throttled. Expected available in {seconds} {unit}."),
            )
        }
    }

    /// 500 comes from the app (JSON); 502/503/504 from the gateway, as nginx words them.
    pub(super) fn server_error(status: u16) -> Self {
        let title = match status {
            502 => "502 Bad Gateway",
            503 => "503 Service Temporarily Unavailable",
            504 => "504 Gateway Time-out",
            _ => return Self::new(status, "A server error occurred."),
        };
        Self {
            gateway: true,
            ..Self::new(status, title)
        }
    }

    pub(super) fn into_api_error(self, what: String) -> ApiError {
        let retry_after = self.retry_after.map(Duration::from_secs);
        ApiError::from_status(
            self.status,
            what,
            self.detail,
            retry_after,
            "the simulator's token",
        )
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = if self.gateway {
            let title = &self.detail;
            let page = format!(
                "<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n\
                 <center><h1>{title}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
            );
            let mut response = (status, page).into_response();
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
            response
        } else {
            (status, Json(json!({ "detail": self.detail }))).into_response()
        };
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.status == 401 {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
