//! The one write: identify, exactly as `POST /identify` does it.

use async_graphql::{Context, InputObject, Object, Result, SimpleObject};

use super::error::{RequireIdentify, RequireScope};
use super::limits::REPAIR_COST;
use super::types::{BlockResult, BlockValueInput, HeldRequest, IdentityNode};
use crate::app;
use crate::app::repair::{self, Actor, ErasureTarget};
use crate::auth::{Authentication, Scope};
use crate::domain::{ContactValue, Email, IdentifyRequest, Phone};
use crate::http::error::{ApiError, Code};
use crate::http::middleware::RequestId;
use crate::http::state::AppState;

pub struct MutationRoot;

/// The contact details of one order; at least one of the two is required.
#[derive(Debug, InputObject)]
pub struct IdentifyInput {
    /// Trimmed and lower-cased before matching; empty counts as absent.
    pub email: Option<String>,
    /// Spaces, dashes, dots and parentheses are dropped; a leading `+` is kept.
    pub phone_number: Option<String>,
}

/// One order's result in `identifyBatch`: the identity a single `identify` would
/// have answered with, or why the order changed nothing.
#[derive(SimpleObject)]
pub struct BatchOrderResult {
    pub identity: Option<IdentityNode>,
    pub error: Option<OrderError>,
}

/// Why one order of a batch changed nothing.
#[derive(SimpleObject)]
pub struct OrderError {
    /// `BAD_USER_INPUT` or `BLOCKED_VALUE`.
    pub code: String,
    pub message: String,
    /// The input field at fault (`email`, `phoneNumber`, or `input` for the pair),
    /// when there is one.
    pub field: Option<String>,
}

/// Whom `eraseIdentity` forgets: exactly one of the three.
#[derive(Debug, InputObject)]
pub struct EraseInput {
    pub email: Option<String>,
    pub phone_number: Option<String>,
    pub primary_contact_id: Option<i32>,
}

/// What an erasure removed (docs/SPEC.md §11).
#[derive(SimpleObject)]
#[graphql(name = "Erasure")]
pub struct ErasureResult {
    /// The erased identity's primary; null when only traces (a held request, a
    /// block) carried the value.
    pub primary_contact_id: Option<i32>,
    pub contacts_erased: usize,
    pub values_erased: usize,
    pub events_redacted: usize,
    pub held_requests_erased: usize,
    pub blocks_erased: usize,
}

/// What `rejectHeld` did.
#[derive(SimpleObject)]
pub struct RejectResult {
    pub held: HeldRequest,
    /// What blocking the suspect value did, when asked to.
    pub block: Option<BlockResult>,
}

/// Who asks, for the ledger.
fn actor<'a>(ctx: &'a Context<'_>) -> Actor<'a> {
    Actor {
        principal: ctx
            .data_opt::<Authentication>()
            .map_or("anonymous", Authentication::name),
        request_id: ctx.data_opt::<RequestId>().map(|id| id.0.as_str()),
    }
}

/// The one write, and the administrators' repairs of the identity graph.
#[Object(name = "Mutation")]
impl MutationRoot {
    /// Links the order's contact details into one identity (creating, extending or
    /// merging identities as needed) and returns it.
    #[graphql(guard = "RequireIdentify")]
    async fn identify(&self, ctx: &Context<'_>, input: IdentifyInput) -> Result<IdentityNode> {
        let request =
            IdentifyRequest::parse(input.email.as_deref(), input.phone_number.as_deref())?;
        let state = ctx.data_unchecked::<AppState>();
        let request_id = ctx.data_opt::<RequestId>().map(|id| id.0.clone());
        let identified =
            app::identify::identify(&state.pool, request, state.policy.clone(), request_id).await?;
        state.record_identified(&identified);
        super::query::audit(ctx, Some("identify"), identified.identity.contacts.len());
        Ok(IdentityNode(
            identified.identity.into(),
            Some(identified.outcome),
        ))
    }

    /// Many orders at once (docs/SPEC.md §13): the result of sending each to
    /// `identify` in turn, committed together; an order that fails validation or
    /// whose values are all blocked gets its own error and the others apply. At most
    /// `BATCH_MAX_ORDERS`; the selection is paid for per order.
    #[graphql(
        guard = "RequireIdentify",
        complexity = "inputs.len().saturating_mul(child_complexity + 1) + 1"
    )]
    async fn identify_batch(
        &self,
        ctx: &Context<'_>,
        inputs: Vec<IdentifyInput>,
    ) -> Result<Vec<BatchOrderResult>> {
        let state = ctx.data_unchecked::<AppState>();
        let max = state.config.batch_max_orders as usize;
        if inputs.len() > max {
            return Err(Code::InvalidInput.argument_error(
                "inputs",
                format!(
                    "a batch holds at most {max} orders (BATCH_MAX_ORDERS), got {}",
                    inputs.len()
                ),
            ));
        }
        super::charge_batch(ctx, inputs.len())?;
        let orders: Vec<Result<IdentifyRequest, crate::domain::InputError>> = inputs
            .iter()
            .map(|input| {
                IdentifyRequest::parse(input.email.as_deref(), input.phone_number.as_deref())
            })
            .collect();
        let valid: Vec<IdentifyRequest> = orders.iter().filter_map(|o| o.clone().ok()).collect();
        let request_id = ctx.data_opt::<RequestId>().map(|id| id.0.clone());
        let mut applied = if valid.is_empty() {
            Vec::new()
        } else {
            crate::app::batch::identify_batch(
                &state.pool,
                &state.batches,
                valid,
                state.policy.clone(),
                request_id,
            )
            .await?
        }
        .into_iter();
        let mut contacts_read = 0;
        let mut results = Vec::with_capacity(orders.len());
        for order in orders {
            let error = match order {
                Err(error) => ApiError::InvalidInput(error),
                Ok(_) => match applied.next() {
                    Some(Ok(identified)) => {
                        state.record_identified(&identified);
                        contacts_read += identified.identity.contacts.len();
                        results.push(BatchOrderResult {
                            identity: Some(IdentityNode(
                                identified.identity.into(),
                                Some(identified.outcome),
                            )),
                            error: None,
                        });
                        continue;
                    }
                    Some(Err(err)) => ApiError::Service(err),
                    None => ApiError::Internal,
                },
            };
            let detail = error.graphql_detail();
            results.push(BatchOrderResult {
                identity: None,
                error: Some(OrderError {
                    code: detail.code,
                    message: detail.message,
                    field: detail.field,
                }),
            });
        }
        super::query::audit(ctx, Some("identifyBatch"), contacts_read);
        Ok(results)
    }

    /// Blocks an email or a phone number: it never links anything again; it is
    /// removed from every contact holding it and the identities it joined are split
    /// into what the remaining evidence joins (docs/SPEC.md §10.4).
    #[graphql(
        guard = "RequireScope(Scope::Admin)",
        complexity = "REPAIR_COST + child_complexity"
    )]
    async fn block_value(&self, ctx: &Context<'_>, input: BlockValueInput) -> Result<BlockResult> {
        let value = input.value()?;
        let reason = input.reason()?;
        let state = ctx.data_unchecked::<AppState>();
        let blocked = repair::block_value(&state.pool, value, reason, actor(ctx)).await?;
        state.feed.committed(blocked.events());
        super::query::audit(ctx, Some("blockValue"), 0);
        Ok(BlockResult(blocked))
    }

    /// Removes an administrator's block; re-merges nothing. False when the value was
    /// not blocked.
    #[graphql(guard = "RequireScope(Scope::Admin)", complexity = "REPAIR_COST")]
    async fn unblock_value(&self, ctx: &Context<'_>, input: BlockValueInput) -> Result<bool> {
        let value = input.value()?;
        let state = ctx.data_unchecked::<AppState>();
        Ok(repair::unblock_value(&state.pool, value, actor(ctx)).await?)
    }

    /// Applies a held request now, as `identify` would without the identity limits,
    /// and answers the resulting identity.
    #[graphql(
        guard = "RequireScope(Scope::Admin)",
        complexity = "REPAIR_COST + child_complexity"
    )]
    async fn approve_held(&self, ctx: &Context<'_>, id: i64) -> Result<IdentityNode> {
        let state = ctx.data_unchecked::<AppState>();
        let (identified, _) =
            repair::approve_held(&state.pool, id, &state.policy, actor(ctx)).await?;
        state.record_identified(&identified);
        super::query::audit(ctx, Some("approveHeld"), identified.identity.contacts.len());
        Ok(IdentityNode(
            identified.identity.into(),
            Some(identified.outcome),
        ))
    }

    /// Forgets a customer: every contact of the identity and every trace of its
    /// values, in one transaction (docs/SPEC.md §11). A later order with the same
    /// values starts a new customer.
    #[graphql(
        guard = "RequireScope(Scope::Admin)",
        complexity = "REPAIR_COST + child_complexity"
    )]
    async fn erase_identity(&self, ctx: &Context<'_>, input: EraseInput) -> Result<ErasureResult> {
        let target = match (input.email, input.phone_number, input.primary_contact_id) {
            (Some(email), None, None) => ErasureTarget::Value(ContactValue::Email(
                Email::parse(&email)?
                    .ok_or_else(|| Code::InvalidInput.argument_error("email", "email is blank"))?,
            )),
            (None, Some(phone), None) => {
                ErasureTarget::Value(ContactValue::Phone(Phone::parse(&phone)?.ok_or_else(
                    || Code::InvalidInput.argument_error("phoneNumber", "phoneNumber is blank"),
                )?))
            }
            (None, None, Some(id)) => ErasureTarget::Primary(id),
            _ => {
                return Err(Code::InvalidInput.argument_error(
                    "input",
                    "give exactly one of email, phoneNumber and primaryContactId",
                ));
            }
        };
        let state = ctx.data_unchecked::<AppState>();
        let erased = repair::erase(&state.pool, target, actor(ctx)).await?;
        state.feed.committed(1);
        super::query::audit(ctx, Some("eraseIdentity"), 0);
        Ok(ErasureResult {
            primary_contact_id: erased.primary_contact_id,
            contacts_erased: erased.contacts_erased,
            values_erased: erased.values_erased,
            events_redacted: erased.events_redacted,
            held_requests_erased: erased.held_requests_erased,
            blocks_erased: erased.blocks_erased,
        })
    }

    /// Rejects a held request; with `blockValue: true`, also blocks its suspect
    /// value as `blockValue` does.
    #[graphql(
        guard = "RequireScope(Scope::Admin)",
        complexity = "REPAIR_COST + child_complexity"
    )]
    async fn reject_held(
        &self,
        ctx: &Context<'_>,
        id: i64,
        #[graphql(default = false)] block_value: bool,
    ) -> Result<RejectResult> {
        let state = ctx.data_unchecked::<AppState>();
        let (held, blocked) = repair::reject_held(&state.pool, id, block_value, actor(ctx)).await?;
        state
            .feed
            .committed(blocked.as_ref().map_or(0, repair::Blocked::events));
        super::query::audit(ctx, Some("rejectHeld"), 0);
        Ok(RejectResult {
            held: held.into(),
            block: blocked.map(BlockResult),
        })
    }
}
