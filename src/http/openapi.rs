//! The OpenAPI document (`GET /openapi.json`) and the Swagger UI (`GET /docs`), both served from
//! the binary so they work on a LAN with no internet access.
//!
//! The document is generated from the handlers' `#[utoipa::path]` attributes and the wire shapes
//! in [`super::dto`], the very types the handlers serialise. Request bodies are parsed by hand in
//! [`super::validate`] (to answer in FastAPI's 422 shape); the typed requests that parser
//! returns carry the schema of the JSON it accepts. This module adds only the document's frame
//! and the descriptions of the error answers.

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToResponse};
use utoipa_swagger_ui::{Config, SwaggerUi};

use super::ApiError;
use super::dto::{HttpError, Mode, ValidationError, Weekday};
use super::validate::{FieldError, LocItem};

/// Where the interactive documentation is served.
pub const DOCS_PATH: &str = "/docs";
/// Where the OpenAPI document is served.
pub const SPEC_PATH: &str = "/openapi.json";

/// Names of the security schemes, as operations refer to them.
pub const BEARER: &str = "bearer";
pub const API_KEY_HEADER: &str = "api_key";

const DESCRIPTION: &str = "\
[← Back to the dashboard](/)

Grid-charges a LuxPower/EG4 battery to a chosen state of charge (SOC) at a scheduled local time, \
through a Monitor My Solar dongle spoken to over MQTT.

**Time on the wire.** Datetimes are naive local wall-clock time (the configured `timezone:`, else \
the system zone) in ISO 8601 without offset: scheduled instants with whole seconds \
(`2025-12-27T02:30:00`), \"now\"-type stamps (`last_updated`, `stopped_at`, `charge_started_at`) \
with microseconds (`2025-12-26T10:30:00.123456`). `/api/telemetry`'s datetimes alone carry their \
offset (`2026-01-15T01:00:00-08:00`), to keep a chart in order across a daylight-saving change.

**Errors.** An invalid request body answers 422 with FastAPI's `{\"detail\": [...]}` list, one \
entry per problem. Other errors answer `{\"detail\": \"...\"}`: 401 without a valid API key, 404 \
for an unknown path, 405 for a wrong method, 413 for a body over 64 KiB.

**API key.** When `server.api_key` (or env `API_KEY`) is set, every `/api/*` path except \
`/api/health` needs `Authorization: Bearer <key>` or `X-API-Key: <key>`. Use **Authorize** to \
send it from this page. Without a configured key the API is open.";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Solar charging backend",
        description = DESCRIPTION,
        license(name = "MIT", identifier = "MIT"),
    ),
    paths(
        super::health,
        super::get_schedule,
        super::post_schedule,
        super::delete_schedule,
        super::charge_status,
        super::history,
        super::charge_plan,
        super::charging_enable,
        super::charging_disable,
        super::charging_status,
        super::telemetry::telemetry,
        super::notify::register,
        super::notify::unregister,
        super::notify::device_status,
        super::notify::notifications,
        super::notify::test,
        super::notify::inverter_status,
        super::root,
    ),
    components(
        schemas(HttpError, ValidationError, FieldError, LocItem, Mode, Weekday),
        responses(
            Unauthorized,
            NotFound,
            MethodNotAllowed,
            PayloadTooLarge,
            Invalid,
            NotSaved,
            ShuttingDown
        ),
    ),
    modifiers(&SecuritySchemes),
    tags(
        (name = "status", description = "Service health and the charge state."),
        (name = "schedule", description = "The one charge schedule."),
        (name = "charging", description = "Charge now, stop now, and the charge state the app shows."),
        (name = "notifications", description = "Push to the iPhone app, ntfy and webhooks."),
    ),
)]
pub struct ApiDoc;

/// The two ways of presenting the optional API key.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The configured API key as `Authorization: Bearer <key>`. Needed only \
                         when the service has `server.api_key` set.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            API_KEY_HEADER,
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-API-Key",
                "The configured API key as `X-API-Key: <key>`. Needed only when the service \
                 has `server.api_key` set.",
            ))),
        );
    }
}

/// The generated document.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").into();
    doc
}

/// `GET /openapi.json` and the Swagger UI under `GET /docs/`.
///
/// `/docs` redirects to `/docs/` so that the page's relative asset paths resolve under it. An
/// unknown file under `/docs/` answers the contract's 404 instead of an empty body.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let config = Config::new([SPEC_PATH])
        // The default validator badge is an image from a public host: nothing leaves the LAN.
        .validator_url("none")
        // A key entered under "Authorize" survives a page reload.
        .persist_authorization(true)
        .try_it_out_enabled(true)
        .display_request_duration(true);
    Router::from(
        SwaggerUi::new(DOCS_PATH)
            .url(SPEC_PATH, document())
            .config(config),
    )
    .layer(axum::middleware::map_response(not_found_in_contract_shape))
}

async fn not_found_in_contract_shape(response: Response) -> Response {
    if response.status() == StatusCode::NOT_FOUND {
        ApiError::detail(StatusCode::NOT_FOUND, "Not Found").into_response()
    } else {
        response
    }
}

// ---------------------------------------------------------------------------------------------
// Error answers: their descriptions; the bodies are `dto`'s.

/// The API key is configured and the request did not present it.
#[derive(ToResponse)]
#[response(
    description = "No valid API key: the service has `server.api_key` set and the request \
                   carries neither `Authorization: Bearer <key>` nor `X-API-Key: <key>`.",
    example = json!({"detail": "Not authenticated"}),
    headers(("WWW-Authenticate" = String, description = "`Bearer`"))
)]
pub struct Unauthorized(pub HttpError);

/// No such path.
#[derive(ToResponse)]
#[response(
    description = "Unknown path.",
    example = json!({"detail": "Not Found"})
)]
pub struct NotFound(pub HttpError);

/// The path exists, with other methods.
#[derive(ToResponse)]
#[response(
    description = "The path does not take this method.",
    example = json!({"detail": "Method Not Allowed"})
)]
pub struct MethodNotAllowed(pub HttpError);

/// The body is over the limit.
#[derive(ToResponse)]
#[response(
    description = "Request body over 64 KiB.",
    example = json!({"detail": "Request body too large: the limit is 64 KiB"})
)]
pub struct PayloadTooLarge(pub HttpError);

/// The body is not acceptable.
#[derive(ToResponse)]
#[response(
    description = "Invalid request body: malformed JSON, a wrong type, a missing required \
                   field, a value out of range, a bad `start_time` or an unknown `mode`. One \
                   entry per problem.",
    example = json!({"detail": [{"type": "less_than_equal", "loc": ["body", "target_soc"],
        "msg": "Input should be less than or equal to 100", "input": 101, "ctx": {"le": 100}}]})
)]
pub struct Invalid(pub ValidationError);

/// The change could not be saved.
#[derive(ToResponse)]
#[response(
    description = "The change could not be saved (data directory not writable, disk full), \
                   so it was not made.",
    example = json!({"detail": "The change could not be saved, so it was not made: ..."})
)]
pub struct NotSaved(pub HttpError);

/// The service is stopping.
#[derive(ToResponse)]
#[response(
    description = "The service is shutting down; try again in a moment.",
    example = json!({"detail": "The service is shutting down; try again in a moment."})
)]
pub struct ShuttingDown(pub HttpError);
