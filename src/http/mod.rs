//! The HTTP API: a router (no bind here), thin handlers over the engine, the contract's wire
//! shapes and the FastAPI-style errors.

pub mod dto;
pub mod notify;
pub mod openapi;
pub mod serve;
pub mod telemetry;
pub mod validate;

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use jiff::tz::TimeZone;
use subtle::ConstantTimeEq;
use tower_http::cors::{AllowHeaders, AllowOrigin, Any, CorsLayer};

use crate::config::Secret;
use crate::engine::{CommandError, EngineHandle, ScheduleInput};
use crate::store::Store;
use validate::{FieldError, StartTime};

/// The longest `POST /api/charging/enable` waits for the start before answering.
const ENABLE_WAIT: Duration = Duration::from_secs(45);

/// Request bodies larger than this are refused with 413.
pub const MAX_BODY: usize = 64 * 1024;

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub engine: EngineHandle,
    pub tz: TimeZone,
    pub store: Store,
    pub api_key: Option<Secret>,
    pub started: std::time::Instant,
    /// The service's clock (the wall clock, or a test's manual one).
    pub clock: crate::clock::Clock,
    /// Where `/metrics` reads from.
    pub metrics: crate::metrics::Metrics,
    /// The last day of battery readings (`/api/telemetry`).
    pub telemetry: telemetry::Telemetry,
    /// The app's devices and the notification channels (`/api/device/*`, `/api/notifications`).
    pub notifier: crate::notify::Notifier,
    /// Why a cheapest-hours schedule cannot be planned here (no battery capacity configured),
    /// when it cannot.
    pub cheapest_unavailable: Option<String>,
}

/// The whole API as a router.
pub fn router(state: ApiState, cors_origins: &[String], request_timeout: Duration) -> Router {
    let state = Arc::new(state);
    let api = Router::new()
        .route("/api/telemetry", get(telemetry::telemetry))
        .route("/api/health", get(health))
        .route(
            "/api/charge/schedule",
            get(get_schedule)
                .post(post_schedule)
                .delete(delete_schedule),
        )
        .route("/api/charge/status", get(charge_status))
        .route("/api/charge/history", get(history))
        .route("/api/charge/plan", get(charge_plan))
        .route("/api/charging/enable", axum::routing::post(charging_enable))
        .route(
            "/api/charging/disable",
            axum::routing::post(charging_disable),
        )
        .route("/api/charging/status", get(charging_status))
        .route(
            "/api/device/register",
            axum::routing::post(notify::register),
        )
        .route(
            "/api/device/unregister",
            axum::routing::delete(notify::unregister),
        )
        .route("/api/device/status", get(notify::device_status))
        .route("/api/notifications", get(notify::notifications))
        .route("/api/notifications/test", axum::routing::post(notify::test))
        .route("/api/inverter/status", get(notify::inverter_status))
        .route("/", get(root))
        .route("/metrics", get(metrics))
        .merge(openapi::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            require_api_key,
        ))
        .with_state(state);
    api.layer(tower_http::timeout::TimeoutLayer::with_status_code(
        StatusCode::REQUEST_TIMEOUT,
        request_timeout,
    ))
    .layer(cors(cors_origins))
}

fn cors(origins: &[String]) -> CorsLayer {
    let layer = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST, Method::DELETE, Method::OPTIONS])
        // Echoes the requested headers: browsers never let a wildcard stand for
        // `Authorization`, so `*` would block a web client that sends the API key as a bearer.
        .allow_headers(AllowHeaders::mirror_request())
        .max_age(Duration::from_secs(600));
    if origins.iter().any(|o| o == "*") {
        layer.allow_origin(Any)
    } else {
        let list: Vec<HeaderValue> = origins.iter().filter_map(|o| o.parse().ok()).collect();
        layer.allow_origin(AllowOrigin::list(list))
    }
}

/// An error answer in the contract's shape.
pub struct ApiError {
    status: StatusCode,
    body: ErrorBody,
}

/// The two shapes of an error answer (see [`dto::HttpError`] and [`dto::ValidationError`]).
#[derive(serde::Serialize)]
#[serde(untagged)]
enum ErrorBody {
    Detail(dto::HttpError),
    Validation(dto::ValidationError),
}

impl ApiError {
    pub fn detail(status: StatusCode, detail: impl Into<String>) -> ApiError {
        ApiError {
            status,
            body: ErrorBody::Detail(dto::HttpError {
                detail: detail.into(),
            }),
        }
    }
    pub fn validation(errors: Vec<FieldError>) -> ApiError {
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            body: ErrorBody::Validation(dto::ValidationError { detail: errors }),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> ApiError {
        match e {
            CommandError::Schedule(e) => ApiError::validation(vec![validate::value_error(
                "start_time",
                serde_json::Value::Null,
                e.to_string(),
            )]),
            CommandError::Store(why) => ApiError::detail(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "The change could not be saved, so it was not made: {why}. Check that the data directory is writable and the disk is not full."
                ),
            ),
            CommandError::ShuttingDown => ApiError::detail(
                StatusCode::SERVICE_UNAVAILABLE,
                "The service is shutting down; try again in a moment.",
            ),
        }
    }
}

async fn not_found() -> ApiError {
    ApiError::detail(StatusCode::NOT_FOUND, "Not Found")
}

async fn method_not_allowed() -> ApiError {
    ApiError::detail(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed")
}

/// Reads a request body with the size limit, answering 413 in the contract's shape.
async fn read_body(body: Body) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
        ApiError::detail(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "Request body too large: the limit is {} KiB",
                MAX_BODY / 1024
            ),
        )
    })
}

/// With an API key configured, every `/api/*` path but health needs it.
async fn require_api_key(State(state): State<Arc<ApiState>>, req: Request, next: Next) -> Response {
    let Some(key) = &state.api_key else {
        return next.run(req).await;
    };
    let path = req.uri().path();
    if !path.starts_with("/api/") || path == "/api/health" || req.method() == Method::OPTIONS {
        return next.run(req).await;
    }
    if presented_key(req.headers())
        .is_some_and(|k| bool::from(k.as_bytes().ct_eq(key.expose().as_bytes())))
    {
        next.run(req).await
    } else {
        let mut r = ApiError::detail(StatusCode::UNAUTHORIZED, "Not authenticated").into_response();
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        r
    }
}

fn presented_key(h: &HeaderMap) -> Option<&str> {
    if let Some(v) = h.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(v);
    }
    let auth = h.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = auth.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// How long health waits for the engine to answer a ping.
pub const HEALTH_PING: Duration = Duration::from_secs(2);

/// The cheapest-hours plan: tonight's while it runs, else the next night's; `null` without a
/// cheapest schedule.
#[utoipa::path(get, path = "/api/charge/plan", tag = "schedule",
    security((), ("bearer" = []), ("api_key" = [])),
    responses(
        (status = 200, description = "The plan, or the JSON literal `null` without a cheapest schedule.",
            body = Option<dto::ChargePlan>),
        (status = 401, response = openapi::Unauthorized),
    ))]
async fn charge_plan(State(s): State<Arc<ApiState>>) -> Json<Option<dto::ChargePlan>> {
    let st = s.engine.status();
    Json(st.plan.as_deref().map(|v| dto::ChargePlan::of(v, &s.tz)))
}

/// Liveness and the broker connection.
///
/// The engine (which fires the schedule and runs every charge) is asked for a sign of life:
/// when it does not answer within 2 s the answer is 503 with `"status": "degraded"` and a
/// `reason`, so that a container healthcheck or an uptime monitor sees a service that no
/// longer charges. Open also when an API key is configured.
#[utoipa::path(get, path = "/api/health", tag = "status",
    responses(
        (status = 200, description = "The service is up and its engine answers.", body = dto::Health),
        (status = 503, description = "The engine does not answer: the service cannot charge.", body = dto::Health),
    ))]
async fn health(State(s): State<Arc<ApiState>>) -> (StatusCode, Json<dto::Health>) {
    let alive = s.engine.ping(HEALTH_PING, &s.clock).await;
    let (code, status, reason) = if alive {
        (StatusCode::OK, "ok", None)
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "degraded",
            Some(format!(
                "the engine did not answer within {} s: schedules and charges are not being run",
                HEALTH_PING.as_secs()
            )),
        )
    };
    let st = s.engine.status();
    let (dongle_online, dongle_last_seen) = dto::Health::dongle(&st, &s.tz, s.clock.now());
    (
        code,
        Json(dto::Health {
            status,
            mqtt_connected: st.mqtt_connected,
            dongle_online,
            dongle_last_seen,
            version: env!("CARGO_PKG_VERSION"),
            uptime_seconds: (s.started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
            reason,
        }),
    )
}

/// The schedule, or null when there is none.
#[utoipa::path(get, path = "/api/charge/schedule", tag = "schedule",
    security((), ("bearer" = []), ("api_key" = [])),
    responses(
        (status = 200, description = "The schedule, or the JSON literal `null` when there is none.",
            body = Option<dto::ScheduleResponse>),
        (status = 401, response = openapi::Unauthorized),
    ))]
async fn get_schedule(State(s): State<Arc<ApiState>>) -> Json<Option<dto::ScheduleResponse>> {
    let st = s.engine.status();
    Json(dto::ScheduleResponse::of(&st, &s.tz))
}

/// Sets the one schedule, replacing any other.
///
/// Persisted before the answer is sent. A POST while a charge runs does not abort it: the running
/// charge takes the new target (and stops at once if it is already reached); `enabled: false`
/// stops it.
#[utoipa::path(post, path = "/api/charge/schedule", tag = "schedule",
    security((), ("bearer" = []), ("api_key" = [])),
    request_body(content = validate::ScheduleRequest, content_type = "application/json",
        description = "The schedule. `target_soc` and `start_time` are required."),
    responses(
        (status = 200, description = "The schedule as saved, with its next run.",
            body = dto::ScheduleResponse),
        (status = 401, response = openapi::Unauthorized),
        (status = 413, response = openapi::PayloadTooLarge),
        (status = 422, response = openapi::Invalid),
        (status = 500, response = openapi::NotSaved),
        (status = 503, response = openapi::ShuttingDown),
    ))]
async fn post_schedule(
    State(s): State<Arc<ApiState>>,
    body: Body,
) -> Result<Json<dto::ScheduleResponse>, ApiError> {
    let bytes = read_body(body).await?;
    let req = validate::parse_schedule_request(&bytes).map_err(ApiError::validation)?;
    let (time, first_run) = match req.start_time {
        StartTime::Daily(t) => (t, None),
        StartTime::At(ts) => (crate::domain::schedule::local_time_of(ts, &s.tz), Some(ts)),
    };
    let input = ScheduleInput {
        target: req.target_soc,
        time,
        mode: req.mode,
        enabled: req.enabled,
        days: req.days,
        first_run,
        ready_by: req.ready_by,
    };
    if req.ready_by.is_some()
        && let Some(why) = &s.cheapest_unavailable
    {
        return Err(ApiError::validation(vec![validate::value_error(
            "strategy",
            serde_json::json!("cheapest"),
            why.clone(),
        )]));
    }
    let status = s.engine.set_schedule(input).await.map_err(|e| match e {
        CommandError::Schedule(e) => ApiError::validation(vec![validate::value_error(
            "start_time",
            serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("start_time").cloned())
                .unwrap_or_default(),
            e.to_string(),
        )]),
        other => other.into(),
    })?;
    dto::ScheduleResponse::of(&status, &s.tz)
        .map(Json)
        .ok_or_else(|| {
            ApiError::detail(
                StatusCode::INTERNAL_SERVER_ERROR,
                "The schedule was saved but is not shown; please report this.",
            )
        })
}

/// Cancels the schedule and stops any running charge.
///
/// Always 200, also when there was no schedule.
#[utoipa::path(delete, path = "/api/charge/schedule", tag = "schedule",
    security((), ("bearer" = []), ("api_key" = [])),
    responses(
        (status = 200, description = "The schedule is gone. `success` is false, with the reason \
            in `message`, when a running charge could not be stopped cleanly.",
            body = dto::Message),
        (status = 401, response = openapi::Unauthorized),
        (status = 500, response = openapi::NotSaved),
        (status = 503, response = openapi::ShuttingDown),
    ))]
async fn delete_schedule(State(s): State<Arc<ApiState>>) -> Result<Json<dto::Message>, ApiError> {
    let outcome = s.engine.cancel_schedule().await?;
    Ok(Json(dto::Message {
        success: outcome.success,
        message: if outcome.success {
            "Schedule cancelled".into()
        } else {
            format!("Schedule cancelled. {}", outcome.message)
        },
    }))
}

/// The charge state, as the original app reads it.
#[utoipa::path(get, path = "/api/charge/status", tag = "status",
    security((), ("bearer" = []), ("api_key" = [])),
    responses(
        (status = 200, description = "The charge state.", body = dto::ChargeStatus),
        (status = 401, response = openapi::Unauthorized),
    ))]
async fn charge_status(State(s): State<Arc<ApiState>>) -> Json<dto::ChargeStatus> {
    Json(dto::ChargeStatus::of(
        &s.engine.status(),
        &s.tz,
        s.clock.now(),
    ))
}

/// The charge state, as the app's "backend as source of truth" screens read it.
#[utoipa::path(get, path = "/api/charging/status", tag = "charging",
    security((), ("bearer" = []), ("api_key" = [])),
    responses(
        (status = 200, description = "The charge state.", body = dto::ChargingStatus),
        (status = 401, response = openapi::Unauthorized),
    ))]
async fn charging_status(State(s): State<Arc<ApiState>>) -> Json<dto::ChargingStatus> {
    Json(dto::ChargingStatus::of(
        &s.engine.status(),
        &s.tz,
        s.clock.now(),
    ))
}

/// Starts charging now to a target SOC.
///
/// Same safety cutoff and stop rules as a scheduled charge. A recurring schedule stays and runs
/// on its next occurrence; a `once` schedule (or none) gives way to a one-shot schedule for
/// "now". If the dongle cannot be driven the answer is still 200, with `success: false`, a
/// `message` that says what failed and `is_charging: false`; settings already written are
/// rolled back. A dongle that is offline, silent or has sent no SOC yet is refused at once.
#[utoipa::path(post, path = "/api/charging/enable", tag = "charging",
    security((), ("bearer" = []), ("api_key" = [])),
    request_body(content = validate::EnableRequest, content_type = "application/json",
        description = "The SOC to charge to."),
    responses(
        (status = 200, description = "Charging started (`success: true`), or not, with the \
            reason in `message`.", body = dto::EnableResponse,
            examples(
                ("started" = (value = json!({"success": true, "message": "Charging enabled to 80%",
                    "target_soc": 80, "current_soc": 45, "is_charging": true}))),
                ("failed" = (value = json!({"success": false,
                    "message": "Charging could not be started: could not set ACChgSOCLimit to 80: not connected to the MQTT broker",
                    "target_soc": 80, "current_soc": 45, "is_charging": false}))),
            )),
        (status = 401, response = openapi::Unauthorized),
        (status = 413, response = openapi::PayloadTooLarge),
        (status = 422, response = openapi::Invalid),
        (status = 500, response = openapi::NotSaved),
        (status = 503, response = openapi::ShuttingDown),
    ))]
async fn charging_enable(
    State(s): State<Arc<ApiState>>,
    body: Body,
) -> Result<Json<dto::EnableResponse>, ApiError> {
    let bytes = read_body(body).await?;
    let req = validate::parse_enable_request(&bytes).map_err(ApiError::validation)?;
    // A dongle that answers slowly can make a start take minutes (each unanswered write
    // waits, is read back and retried); the app's request would time out first. Past this
    // bound the answer says where things stand and the start goes on.
    let waited = tokio::select! {
        outcome = s.engine.charge_now(req.target_soc) => Some(outcome),
        _ = s.clock.sleep(ENABLE_WAIT) => None,
    };
    let outcome = match waited {
        Some(outcome) => outcome?,
        None => {
            let status = s.engine.status();
            crate::engine::StartOutcome {
                success: status.is_charging(),
                message: if status.is_charging() {
                    format!("Charging enabled to {}", req.target_soc)
                } else {
                    "Charging is still starting: the dongle is slow to confirm the settings. Check /api/charging/status".into()
                },
                status,
            }
        }
    };
    Ok(Json(dto::EnableResponse {
        success: outcome.success,
        message: outcome.message,
        target_soc: req.target_soc.get(),
        current_soc: outcome.status.soc.map(|s| s.get()),
        is_charging: outcome.status.is_charging(),
    }))
}

/// Stops charging now and cancels the schedule, as the app expects. [ext] With
/// `{"keep_schedule": true}` a recurring schedule is kept: the dashboard's stop button sends it.
#[utoipa::path(post, path = "/api/charging/disable", tag = "charging",
    security((), ("bearer" = []), ("api_key" = [])),
    request_body(content = Option<validate::DisableRequest>, description = "Optional; \
        without it the schedule is cancelled."),
    responses(
        (status = 422, response = openapi::Invalid),
        (status = 200, description = "Charging stopped (`success: true`), or not, with the \
            reason in `message`.", body = dto::DisableResponse),
        (status = 401, response = openapi::Unauthorized),
        (status = 500, response = openapi::NotSaved),
        (status = 503, response = openapi::ShuttingDown),
    ))]
async fn charging_disable(
    State(s): State<Arc<ApiState>>,
    body: Body,
) -> Result<Json<dto::DisableResponse>, ApiError> {
    let bytes = read_body(body).await?;
    let req = validate::parse_disable_request(&bytes).map_err(ApiError::validation)?;
    let outcome = if req.keep_schedule {
        s.engine.stop_charge().await?
    } else {
        s.engine.cancel_schedule().await?
    };
    Ok(Json(dto::DisableResponse {
        success: outcome.success,
        message: outcome.message,
        stopped_at: dto::now_stamp(outcome.stopped_at, &s.tz),
    }))
}

/// The last 100 finished charges, newest first.
#[utoipa::path(get, path = "/api/charge/history", tag = "charging",
    security((), ("bearer" = []), ("api_key" = [])),
    responses(
        (status = 200, description = "Finished charges, newest first (at most 100).",
            body = Vec<dto::HistoryEntry>),
        (status = 401, response = openapi::Unauthorized),
        (status = 500, description = "The history file could not be read.",
            body = dto::HttpError),
    ))]
async fn history(State(s): State<Arc<ApiState>>) -> Result<Json<Vec<dto::HistoryEntry>>, ApiError> {
    let store = s.store.clone();
    let records = tokio::task::spawn_blocking(move || store.history(100))
        .await
        .map_err(|_| {
            ApiError::detail(
                StatusCode::INTERNAL_SERVER_ERROR,
                "The history could not be read.",
            )
        })?
        .map_err(|e| {
            ApiError::detail(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("The history could not be read: {e}"),
            )
        })?;
    Ok(Json(
        records
            .iter()
            .map(|r| dto::HistoryEntry::of(r, &s.tz))
            .collect(),
    ))
}

/// A status overview: a dashboard for browsers, JSON for anything else.
///
/// `Accept: text/html` gets the dashboard page; other clients get the JSON overview.
#[utoipa::path(get, path = "/", tag = "status",
    responses(
        (status = 200, description = "The overview.", content(
            (dto::Overview = "application/json"),
            (String = "text/html"),
        )),
    ))]
async fn root(State(s): State<Arc<ApiState>>, headers: HeaderMap) -> Response {
    let wants_html = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"));
    if wants_html {
        return (
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            crate::http::dto::DASHBOARD_HTML,
        )
            .into_response();
    }
    Json(dto::Overview::of(&s.engine.status(), &s.tz)).into_response()
}

/// Prometheus metrics in the OpenMetrics text format (outside `/api/*`, so scrapers need no
/// key).
async fn metrics(State(s): State<Arc<ApiState>>) -> Response {
    let st = s.engine.status();
    let now = s.clock.now();
    let age = |t: jiff::Timestamp| now.duration_since(t).try_into().unwrap_or(Duration::ZERO);
    let gauges = crate::metrics::StatusGauges {
        soc_percent: st.soc.map(|s| f64::from(s.get())),
        battery_power_watts: st.battery_power,
        charging: st.is_charging(),
        mqtt_connected: st.mqtt_connected,
        last_message_age: st.last_message.map(age),
        next_run_unix_seconds: st.next_run().map(|t| t.as_second()),
        uptime: age(st.started_at),
    };
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        s.metrics.render(&gauges),
    )
        .into_response()
}
