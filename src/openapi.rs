//! The OpenAPI 3 document of the REST API, generated from the handlers' and
//! types' annotations, served at `/openapi.json`.

use utoipa::OpenApi;

use crate::error::{ErrorBody, ErrorDetail};
use crate::rest;
use crate::rest::identify::{IdentifyRequestBody, IdentifyResponse, IdentityBody};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Identity reconciliation",
        description = "Links contact records that share an email or a phone number into one \
                       customer identity. GraphQL is served at /graphql."
    ),
    paths(rest::identify::identify, rest::health::healthz, rest::health::readyz),
    components(schemas(
        IdentifyRequestBody,
        IdentifyResponse,
        IdentityBody,
        ErrorBody,
        ErrorDetail
    ))
)]
struct ApiDoc;

/// The document as served.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

pub fn json() -> String {
    document()
        .to_pretty_json()
        .expect("the OpenAPI document serialises")
}
