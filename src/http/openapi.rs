//! The OpenAPI 3 document of the REST API, generated from the handlers' and
//! types' annotations, served at `/openapi.json`.

use utoipa::OpenApi;

use crate::http::error::{ErrorBody, ErrorDetail};
use crate::http::rest;
use crate::http::rest::identify::{
    IdentifyRequestBody, IdentifyResponse, IdentityBody, OutcomeBody,
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Identity reconciliation",
        description = "Links contact records that share an email or a phone number into one \
                       customer identity. GraphQL is served at /graphql."
    ),
    paths(
        rest::identify::identify,
        rest::batch::identify_batch,
        rest::health::healthz,
        rest::health::readyz
    ),
    components(schemas(
        IdentifyRequestBody,
        IdentifyResponse,
        rest::batch::IdentifyBatchRequestBody,
        rest::batch::IdentifyBatchResponse,
        rest::batch::OrderResult,
        OutcomeBody,
        IdentityBody,
        ErrorBody,
        ErrorDetail
    )),
    modifiers(&BearerScheme)
)]
struct ApiDoc;

/// Declares the bearer credential (docs/SPEC.md §9) the operations refer to.
struct BearerScheme;

impl utoipa::Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "bearer",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .bearer_format("irk_<id>_<secret> API key")
                        .build(),
                ),
            );
    }
}

/// The document as served.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

pub fn json() -> String {
    document()
        .to_pretty_json()
        .expect("the OpenAPI document serialises")
}
