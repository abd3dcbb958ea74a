//! The one write: identify, exactly as `POST /identify` does it.

use async_graphql::{Context, InputObject, Object, Result};

use super::error::RequireIdentify;
use super::types::IdentityNode;
use crate::domain::IdentifyRequest;
use crate::service;
use crate::state::AppState;

pub struct MutationRoot;

/// The contact details of one order; at least one of the two is required.
#[derive(Debug, InputObject)]
pub struct IdentifyInput {
    /// Trimmed and lower-cased before matching; empty counts as absent.
    pub email: Option<String>,
    /// Spaces, dashes, dots and parentheses are dropped; a leading `+` is kept.
    pub phone_number: Option<String>,
}

/// The one write.
#[Object(name = "Mutation")]
impl MutationRoot {
    /// Links the order's contact details into one identity (creating, extending or
    /// merging identities as needed) and returns it.
    #[graphql(guard = "RequireIdentify")]
    async fn identify(&self, ctx: &Context<'_>, input: IdentifyInput) -> Result<IdentityNode> {
        let request =
            IdentifyRequest::parse(input.email.as_deref(), input.phone_number.as_deref())?;
        let state = ctx.data_unchecked::<AppState>();
        let identified = service::identify(&state.pool, request).await?;
        state.record_identified(&identified);
        super::query::audit(ctx, Some("identify"), identified.identity.contacts.len());
        Ok(IdentityNode::from(identified.identity))
    }
}
