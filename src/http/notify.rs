//! The app's push-notification endpoints (`/api/device/*`, answered exactly as the old backend
//! did), the notification channels (`/api/notifications`) and the inverter's AC-charge
//! settings (`/api/inverter/status`).

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::State;

use super::{ApiError, ApiState, dto, openapi, read_body, validate};

/// Registers the app's device token for push notifications.
///
/// Always 200: `success` says whether it worked and `message` why not (push not configured or
/// not enabled on this server, a token that is not hex). Registering a known token again
/// updates its preferences. Tokens are kept across restarts.
#[utoipa::path(post, path = "/api/device/register", tag = "notifications",
    security((), ("bearer" = []), ("api_key" = [])),
    request_body(content = validate::DeviceRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Registered, or why not.", body = dto::DeviceResult),
        (status = 401, response = openapi::Unauthorized),
        (status = 413, response = openapi::PayloadTooLarge),
        (status = 422, response = openapi::Invalid),
    ))]
pub async fn register(
    State(s): State<Arc<ApiState>>,
    body: Body,
) -> Result<Json<dto::DeviceResult>, ApiError> {
    let bytes = read_body(body).await?;
    let req = validate::parse_device_request(&bytes).map_err(ApiError::validation)?;
    let a = s
        .notifier
        .register(&req.device_token, req.preferences, s.clock.now());
    Ok(Json(dto::DeviceResult {
        success: a.success,
        message: a.message,
    }))
}

/// Forgets the app's device token.
#[utoipa::path(delete, path = "/api/device/unregister", tag = "notifications",
    security((), ("bearer" = []), ("api_key" = [])),
    request_body(content = validate::DeviceRequest, content_type = "application/json",
        description = "`device_token` only."),
    responses(
        (status = 200, description = "Unregistered, or why not.", body = dto::DeviceResult),
        (status = 401, response = openapi::Unauthorized),
        (status = 413, response = openapi::PayloadTooLarge),
        (status = 422, response = openapi::Invalid),
    ))]
pub async fn unregister(
    State(s): State<Arc<ApiState>>,
    body: Body,
) -> Result<Json<dto::DeviceResult>, ApiError> {
    let bytes = read_body(body).await?;
    let req = validate::parse_device_request(&bytes).map_err(ApiError::validation)?;
    let a = s.notifier.unregister(&req.device_token);
    Ok(Json(dto::DeviceResult {
        success: a.success,
        message: a.message,
    }))
}

/// Whether push to the app is on, and how many devices are registered.
#[utoipa::path(get, path = "/api/device/status", tag = "notifications",
    security((), ("bearer" = []), ("api_key" = [])),
    responses(
        (status = 200, description = "Push status.", body = dto::DeviceStatus),
        (status = 401, response = openapi::Unauthorized),
    ))]
pub async fn device_status(State(s): State<Arc<ApiState>>) -> Json<dto::DeviceStatus> {
    let (apns_enabled, registered_devices) = s.notifier.device_status();
    Json(dto::DeviceStatus {
        apns_enabled,
        registered_devices,
    })
}

/// The notification channels (the app, ntfy, webhooks), their events and last delivery.
#[utoipa::path(get, path = "/api/notifications", tag = "notifications",
    security((), ("bearer" = []), ("api_key" = [])),
    responses(
        (status = 200, description = "The configured channels.", body = dto::Notifications),
        (status = 401, response = openapi::Unauthorized),
    ))]
pub async fn notifications(State(s): State<Arc<ApiState>>) -> Json<dto::Notifications> {
    Json(dto::Notifications::of(s.notifier.channels(), &s.tz))
}

/// Sends a test message to every channel now and says how each went (200 even when some
/// fail).
#[utoipa::path(post, path = "/api/notifications/test", tag = "notifications",
    security((), ("bearer" = []), ("api_key" = [])),
    responses(
        (status = 200, description = "Each channel's outcome.", body = dto::NotificationTest),
        (status = 401, response = openapi::Unauthorized),
    ))]
pub async fn test(State(s): State<Arc<ApiState>>) -> Json<dto::NotificationTest> {
    let results = s.notifier.test(s.clock.now()).await;
    Json(dto::NotificationTest {
        results: results
            .into_iter()
            .map(|r| dto::TestOutcome {
                name: r.name,
                ok: r.ok,
                detail: r.detail,
            })
            .collect(),
    })
}

/// The inverter's AC-charge settings as last read from the dongle.
#[utoipa::path(get, path = "/api/inverter/status", tag = "status",
    security((), ("bearer" = []), ("api_key" = [])),
    responses(
        (status = 200, description = "The settings; every value `null` and `data_available: false` before any was read.",
            body = dto::InverterStatus),
        (status = 401, response = openapi::Unauthorized),
    ))]
pub async fn inverter_status(State(s): State<Arc<ApiState>>) -> Json<dto::InverterStatus> {
    Json(dto::InverterStatus::of(&s.engine.status()))
}
