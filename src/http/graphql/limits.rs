//! Bounds on one GraphQL document, checked after parsing and before anything runs.
//!
//! [`Bounds`] refuses a document over the depth or cost limit, naming its figure and
//! the limit (async-graphql's own limits say neither); the checks here add what a
//! public endpoint also needs: the size of the document (fields, aliases), how many
//! writes it asks for, and the validity of every write's input, so that a document
//! either runs whole or writes nothing because of its own input.

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::extensions::{Extension, ExtensionContext, ExtensionFactory, NextValidation};
use async_graphql::parser::Positioned;
use async_graphql::parser::types::{
    ExecutableDocument, Field, OperationType, Selection, SelectionSet,
};
use async_graphql::{Name, Pos, ServerError, ValidationResult, Variables};
use async_graphql_value::{ConstValue, Value};

use super::error::{Code, coded};
use crate::domain::{IdentifyRequest, InputError};

/// Page size when `first` is not given.
pub const DEFAULT_PAGE_SIZE: i32 = 20;
/// Largest page a client may ask for.
pub const MAX_PAGE_SIZE: i32 = 100;
/// Deepest selection accepted; GraphiQL's introspection query needs 13 levels.
pub const MAX_DEPTH: usize = 15;
/// Largest total cost accepted. A list costs its page size times its selection, so
/// one full page of contacts with their identities fits, and an identity's contacts
/// nested in a page of contacts does not.
pub const MAX_COMPLEXITY: usize = 2_500;
/// Cost of an identity's lists of values (`emails`, `phoneNumbers`,
/// `secondaryContactIds`): each is as long as the identity is large.
pub const IDENTITY_VALUES_COST: usize = 10;
/// Cost of a root field that reads the database on its own (no loader to share).
pub const LOOKUP_COST: usize = 10;
/// `Contact.linkedBecause` reads the identity and its evidence.
pub const LINKED_BECAUSE_COST: usize = 20;
/// The longest chain `Contact.linkedBecause` answers with.
pub const MAX_CHAIN_STEPS: usize = 50;
/// Each of the administrators' repairs (docs/SPEC.md §10.3–§10.4).
pub const REPAIR_COST: usize = 50;
/// Most directives on one field (`@skip`, `@include`: two are ever useful).
pub const MAX_DIRECTIVES_PER_FIELD: usize = 4;
/// Most errors in one answer: a document with thousands of mistakes gets the first
/// ones and a count of the rest, not an answer larger than the document.
pub const MAX_ERRORS: usize = 20;

/// The depth and cost limits, checked on what async-graphql's validation computed.
pub struct Bounds;

impl ExtensionFactory for Bounds {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(Bounds)
    }
}

#[async_trait::async_trait]
impl Extension for Bounds {
    async fn validation(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<ServerError>> {
        let result = next.run(ctx).await?;
        if result.depth > MAX_DEPTH {
            return Err(vec![limit_error(format!(
                "the document is nested too deep: {} levels, over the limit of {MAX_DEPTH}",
                result.depth
            ))]);
        }
        if result.complexity > MAX_COMPLEXITY {
            return Err(vec![limit_error(format!(
                "the document is too complex: it costs {}, over the limit of \
                 {MAX_COMPLEXITY} (a field costs 1, a list its page size times its \
                 selection); ask for fewer fields or smaller pages",
                result.complexity
            ))]);
        }
        Ok(result)
    }
}

/// The page size a `first` argument asks for, as the complexity counts it.
pub fn page_size(first: Option<i32>) -> i32 {
    first.unwrap_or(DEFAULT_PAGE_SIZE).clamp(0, MAX_PAGE_SIZE)
}

/// A page request (`first`, `after`) checked against the page bounds.
#[derive(Debug, Clone)]
pub struct Page<C = i32> {
    pub first: usize,
    /// The key the previous page ended with (a contact id unless said otherwise).
    pub after: Option<C>,
}

impl<C: serde::Serialize + serde::de::DeserializeOwned + Send + Sync> Page<C> {
    pub fn parse(first: Option<i32>, after: Option<String>) -> async_graphql::Result<Self> {
        use async_graphql::connection::{CursorType, OpaqueCursor};
        let first = first.unwrap_or(DEFAULT_PAGE_SIZE);
        if !(0..=MAX_PAGE_SIZE).contains(&first) {
            return Err(Code::InvalidInput.argument_error(
                "first",
                format!("first must be between 0 and {MAX_PAGE_SIZE}, got {first}"),
            ));
        }
        let after = after
            .map(|cursor| {
                OpaqueCursor::<C>::decode_cursor(&cursor)
                    .map(|OpaqueCursor(id)| id)
                    .map_err(|_| {
                        Code::InvalidInput
                            .argument_error("after", "after is not a cursor this API issued")
                    })
            })
            .transpose()?;
        Ok(Self {
            first: first as usize,
            after,
        })
    }

    /// How many rows to fetch: one more than the page tells whether another follows.
    pub fn fetch_limit(&self) -> i64 {
        self.first as i64 + 1
    }

    /// The connection of rows fetched with [`Page::fetch_limit`]: the first `first`
    /// of them, each made into its cursor key and node by `edge`.
    pub fn connection<R, N: async_graphql::OutputType>(
        &self,
        rows: Vec<R>,
        mut edge: impl FnMut(R) -> (C, N),
    ) -> async_graphql::connection::Connection<async_graphql::connection::OpaqueCursor<C>, N> {
        use async_graphql::connection::{Connection, Edge, OpaqueCursor};
        let mut connection = Connection::new(self.after.is_some(), rows.len() > self.first);
        connection
            .edges
            .extend(rows.into_iter().take(self.first).map(|row| {
                let (key, node) = edge(row);
                Edge::new(OpaqueCursor(key), node)
            }));
        connection
    }
}

/// The configured bounds.
#[derive(Debug, Clone, Copy)]
pub struct DocumentLimits {
    pub max_fields: usize,
    pub max_aliases: usize,
    pub max_identify: usize,
}

/// What the checks learned of an accepted document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DocumentSummary {
    /// `identify` fields the document can run, counting each fragment spread.
    pub identify_count: usize,
}

/// Checks `document` against `limits`, and every `identify` input in it.
pub fn check(
    document: &ExecutableDocument,
    variables: &Variables,
    limits: &DocumentLimits,
) -> Result<DocumentSummary, Vec<ServerError>> {
    let mut size = Size::default();
    for (_, operation) in document.operations.iter() {
        size.add(&operation.node.selection_set.node);
    }
    for fragment in document.fragments.values() {
        size.add(&fragment.node.selection_set.node);
    }
    if size.fields > limits.max_fields {
        return Err(vec![limit_error(format!(
            "the document selects {} fields; at most {} are allowed",
            size.fields, limits.max_fields
        ))]);
    }
    if size.aliases > limits.max_aliases {
        return Err(vec![limit_error(format!(
            "the document has {} aliases; at most {} are allowed",
            size.aliases, limits.max_aliases
        ))]);
    }

    let mut counter = IdentifyCounter {
        document,
        memo: HashMap::new(),
    };
    let identify_count = document
        .operations
        .iter()
        .filter(|(_, operation)| operation.node.ty == OperationType::Mutation)
        .map(|(_, operation)| counter.count(&operation.node.selection_set.node, 0))
        .fold(0usize, usize::saturating_add);
    if identify_count > limits.max_identify {
        return Err(vec![limit_error(format!(
            "the document runs identify {identify_count} times; at most {} are allowed \
             per request",
            limits.max_identify
        ))]);
    }
    let errors = invalid_identify_inputs(document, variables);
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(DocumentSummary { identify_count })
}

pub fn limit_error(message: String) -> ServerError {
    coded(ServerError::new(message, None), Code::InvalidInput)
}

/// Field selections and aliases written in the document (each written one once).
#[derive(Debug, Default)]
struct Size {
    fields: usize,
    aliases: usize,
}

impl Size {
    fn add(&mut self, selection_set: &SelectionSet) {
        for item in &selection_set.items {
            match &item.node {
                Selection::Field(field) => {
                    self.fields += 1;
                    if field.node.alias.is_some() {
                        self.aliases += 1;
                    }
                    self.add(&field.node.selection_set.node);
                }
                Selection::InlineFragment(fragment) => {
                    self.add(&fragment.node.selection_set.node);
                }
                Selection::FragmentSpread(_) => {}
            }
        }
    }
}

/// Counts `identify` and `identifyBatch` at the root of a mutation, through
/// fragments. Each fragment is
/// counted once and remembered, so nested spreads cost linear time; the document
/// has not been validated yet, so cycles are cut at a depth no valid one reaches.
struct IdentifyCounter<'a> {
    document: &'a ExecutableDocument,
    memo: HashMap<&'a Name, usize>,
}

const MAX_FRAGMENT_NESTING: usize = 64;

impl<'a> IdentifyCounter<'a> {
    fn count(&mut self, selection_set: &'a SelectionSet, nesting: usize) -> usize {
        if nesting > MAX_FRAGMENT_NESTING {
            return 0;
        }
        let mut total = 0usize;
        for item in &selection_set.items {
            let count = match &item.node {
                // A batch counts once here (it pays its other orders itself, when
                // it runs): thirty batches cannot ride on one request's token.
                Selection::Field(field) => usize::from(matches!(
                    field.node.name.node.as_str(),
                    "identify" | "identifyBatch"
                )),
                Selection::InlineFragment(fragment) => {
                    self.count(&fragment.node.selection_set.node, nesting + 1)
                }
                Selection::FragmentSpread(spread) => {
                    let name = &spread.node.fragment_name.node;
                    match self.memo.get(name) {
                        Some(count) => *count,
                        None => match self.document.fragments.get(name) {
                            Some(fragment) => {
                                let count =
                                    self.count(&fragment.node.selection_set.node, nesting + 1);
                                self.memo.insert(name, count);
                                count
                            }
                            None => 0,
                        },
                    }
                }
            };
            total = total.saturating_add(count);
        }
        total
    }
}

/// Every `identify` written at the root of a mutation or of a fragment on
/// `Mutation`, with its input resolved against the variables, checked as the
/// mutation will check it.
fn invalid_identify_inputs(
    document: &ExecutableDocument,
    variables: &Variables,
) -> Vec<ServerError> {
    let mut fields = Vec::new();
    let mut defaults: HashMap<Name, ConstValue> = HashMap::new();
    for (_, operation) in document.operations.iter() {
        if operation.node.ty != OperationType::Mutation {
            continue;
        }
        for definition in &operation.node.variable_definitions {
            if let Some(default) = &definition.node.default_value {
                defaults.insert(definition.node.name.node.clone(), default.node.clone());
            }
        }
        root_identify_fields(&operation.node.selection_set.node, &mut fields, 0);
    }
    for fragment in document.fragments.values() {
        if fragment.node.type_condition.node.on.node == "Mutation" {
            root_identify_fields(&fragment.node.selection_set.node, &mut fields, 0);
        }
    }
    let lookup = |name: &Name| variables.get(name).or_else(|| defaults.get(name)).cloned();
    fields
        .into_iter()
        .filter_map(|field| {
            let input = field
                .node
                .arguments
                .iter()
                .find(|(name, _)| name.node == "input")?;
            let input = resolve(&input.1.node, &lookup)?;
            let ConstValue::Object(input) = input else {
                return None;
            };
            // Values of the wrong type are left to validation, which refuses the
            // whole document before anything runs.
            let email = text_or_absent(input.get("email"))?;
            let phone = text_or_absent(input.get("phoneNumber"))?;
            let err = IdentifyRequest::parse(email, phone).err()?;
            Some(input_error(field, err))
        })
        .collect()
}

fn root_identify_fields<'a>(
    selection_set: &'a SelectionSet,
    fields: &mut Vec<&'a Positioned<Field>>,
    nesting: usize,
) {
    if nesting > MAX_FRAGMENT_NESTING {
        return;
    }
    for item in &selection_set.items {
        match &item.node {
            Selection::Field(field) if field.node.name.node == "identify" => fields.push(field),
            Selection::InlineFragment(fragment) => {
                root_identify_fields(&fragment.node.selection_set.node, fields, nesting + 1);
            }
            _ => {}
        }
    }
}

fn resolve(value: &Value, lookup: &impl Fn(&Name) -> Option<ConstValue>) -> Option<ConstValue> {
    value
        .clone()
        .into_const_with(|name| lookup(&name).ok_or(()))
        .ok()
}

/// `Some(None)` for absent or null, `Some(Some(text))` for a string, `None` for
/// anything else.
fn text_or_absent(value: Option<&ConstValue>) -> Option<Option<&str>> {
    match value {
        None | Some(ConstValue::Null) => Some(None),
        Some(ConstValue::String(text)) => Some(Some(text)),
        Some(_) => None,
    }
}

fn input_error(field: &Positioned<Field>, err: InputError) -> ServerError {
    let response_key = field.node.response_key().node.to_string();
    let mut error = async_graphql::Error::from(err).into_server_error(field.pos);
    error.path = vec![async_graphql::PathSegment::Field(response_key)];
    error
}

/// Caps `errors` at [`MAX_ERRORS`], the last one saying how many were left out.
pub fn cap_errors(errors: &mut Vec<ServerError>) {
    if errors.len() <= MAX_ERRORS {
        return;
    }
    let omitted = errors.len() - (MAX_ERRORS - 1);
    errors.truncate(MAX_ERRORS - 1);
    errors.push(coded(
        ServerError::new(
            format!("{omitted} more errors were left out of this answer"),
            None::<Pos>,
        ),
        Code::InvalidInput,
    ));
}

#[cfg(test)]
mod tests {
    use async_graphql::parser::parse_query;

    use super::*;

    const LIMITS: DocumentLimits = DocumentLimits {
        max_fields: 50,
        max_aliases: 5,
        max_identify: 3,
    };

    fn check_text(query: &str, variables: serde_json::Value) -> Result<usize, String> {
        let document = parse_query(query).unwrap();
        let variables = Variables::from_json(variables);
        check(&document, &variables, &LIMITS)
            .map(|summary| summary.identify_count)
            .map_err(|errors| errors[0].message.clone())
    }

    #[test]
    fn identify_is_counted_through_fragments() {
        let fragment = "fragment Two on Mutation { a: identify(input: {phoneNumber: \"1\"}) { primaryContactId } \
                        b: identify(input: {phoneNumber: \"2\"}) { primaryContactId } }";
        assert_eq!(
            check_text(
                &format!("mutation {{ ...Two }} {fragment}"),
                serde_json::json!({})
            ),
            Ok(2)
        );
        let err = check_text(
            &format!("mutation {{ ...Two ...Two }} {fragment}"),
            serde_json::json!({}),
        )
        .unwrap_err();
        assert!(err.contains("identify 4 times"), "{err}");
    }

    #[test]
    fn fragment_cycles_and_blow_ups_end() {
        let cycle =
            "mutation { ...A } fragment A on Mutation { ...B } fragment B on Mutation { ...A }";
        assert_eq!(check_text(cycle, serde_json::json!({})), Ok(0));
        let mut chain = String::from("mutation { ...F0 } ");
        for level in 0..40 {
            chain.push_str(&format!(
                "fragment F{level} on Mutation {{ ...F{next} ...F{next} }} ",
                next = level + 1
            ));
        }
        chain.push_str("fragment F40 on Mutation { identify(input: {phoneNumber: \"1\"}) { primaryContactId } }");
        let err = check_text(&chain, serde_json::json!({})).unwrap_err();
        assert!(err.contains("identify"), "{err}");
    }

    #[test]
    fn one_bad_input_refuses_the_whole_document() {
        let query = "mutation($bad: String) { a: identify(input: {phoneNumber: \"1\"}) { primaryContactId } \
                     b: identify(input: {email: $bad}) { primaryContactId } }";
        let err = check_text(query, serde_json::json!({"bad": "no-at-sign"})).unwrap_err();
        assert!(err.starts_with("email must contain"), "{err}");
        assert_eq!(
            check_text(query, serde_json::json!({"bad": "a@b.c"})),
            Ok(2)
        );
    }

    #[test]
    fn fields_and_aliases_are_bounded() {
        let aliases: String = (0..6).map(|i| format!("a{i}: __typename ")).collect();
        let err = check_text(&format!("{{ {aliases} }}"), serde_json::json!({})).unwrap_err();
        assert!(err.contains("6 aliases"), "{err}");
        let fields = "__typename ".repeat(51);
        let err = check_text(&format!("{{ {fields} }}"), serde_json::json!({})).unwrap_err();
        assert!(err.contains("51 fields"), "{err}");
    }

    #[test]
    fn errors_are_capped_with_a_count() {
        let mut errors: Vec<ServerError> = (0..100)
            .map(|i| ServerError::new(format!("e{i}"), None))
            .collect();
        cap_errors(&mut errors);
        assert_eq!(errors.len(), MAX_ERRORS);
        assert!(errors.last().unwrap().message.starts_with("81 more errors"));
    }
}
