//! Completes async-graphql's `data` as the GraphQL specification requires, on two
//! points where async-graphql 7 departs from it:
//!
//! - **Null propagation** (spec §6.4.4): a field that raised an error is left out
//!   of its object instead of being `null`, and a failed non-null field leaves its
//!   parent looking complete. Here a failed field becomes `null`, and a `null` in a
//!   non-null position makes its parent `null`, up to the first nullable field.
//! - **Field order** (spec §6.3): fields resolved concurrently are inserted as they
//!   finish, so the order of an answer changed between identical requests. Here
//!   every object is rebuilt in the order of the selection set.
//!
//! Field types come from the served schema's own SDL, read once.

use std::collections::HashMap;
use std::sync::OnceLock;

use async_graphql::indexmap::IndexMap;
use async_graphql::parser::types::{
    BaseType, ExecutableDocument, Field, OperationType, Selection, SelectionSet, Type, TypeKind,
    TypeSystemDefinition,
};
use async_graphql::{Name, Value as ConstValue, Variables};
use async_graphql_value::Value;

/// Each object type's fields and their types, from the SDL.
#[derive(Debug, Default)]
struct TypeTable(HashMap<String, HashMap<String, Type>>);

fn type_table() -> &'static TypeTable {
    static TABLE: OnceLock<TypeTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        let document =
            async_graphql::parser::parse_schema(super::sdl()).expect("the served SDL parses");
        let mut table = TypeTable::default();
        for definition in document.definitions {
            let TypeSystemDefinition::Type(definition) = definition else {
                continue;
            };
            let fields = match definition.node.kind {
                TypeKind::Object(object) => object.fields,
                TypeKind::Interface(interface) => interface.fields,
                _ => continue,
            };
            table.0.insert(
                definition.node.name.node.to_string(),
                fields
                    .into_iter()
                    .map(|field| (field.node.name.node.to_string(), field.node.ty.node))
                    .collect(),
            );
        }
        table
    })
}

/// Rebuilds `data` of the operation `operation_name` of `document` in selection
/// order, with failed fields null and nulls propagated.
pub fn complete(
    data: ConstValue,
    document: &ExecutableDocument,
    operation_name: Option<&str>,
    variables: &Variables,
) -> ConstValue {
    let Some((root_type, selection_set)) = operation(document, operation_name) else {
        return data;
    };
    let completer = Completer {
        table: type_table(),
        document,
        variables,
    };
    match data {
        ConstValue::Object(map) => completer.object(map, root_type, &[selection_set]),
        other => other,
    }
}

fn operation<'a>(
    document: &'a ExecutableDocument,
    operation_name: Option<&str>,
) -> Option<(&'static str, &'a SelectionSet)> {
    let operation = document
        .operations
        .iter()
        .find(|(name, _)| match operation_name {
            Some(wanted) => name.is_some_and(|name| name.as_str() == wanted),
            None => true,
        })?
        .1;
    let root = match operation.node.ty {
        OperationType::Query => "Query",
        OperationType::Mutation => "Mutation",
        OperationType::Subscription => return None,
    };
    Some((root, &operation.node.selection_set.node))
}

struct Completer<'a> {
    table: &'a TypeTable,
    document: &'a ExecutableDocument,
    variables: &'a Variables,
}

/// One response key and every field selection that answers to it.
type CollectedFields<'a> = Vec<(&'a str, Vec<&'a Field>)>;

/// How deep fragments may nest while collecting; the document was validated, so
/// this only guards against a bug turning into a stack overflow.
const MAX_NESTING: usize = 64;

impl<'a> Completer<'a> {
    fn object(
        &self,
        mut map: IndexMap<Name, ConstValue>,
        type_name: &str,
        selection_sets: &[&'a SelectionSet],
    ) -> ConstValue {
        let Some(field_types) = self.table.0.get(type_name) else {
            // Introspection's types are not in the SDL; async-graphql answers them whole.
            return ConstValue::Object(map);
        };
        let mut collected: CollectedFields<'a> = Vec::new();
        for selection_set in selection_sets {
            self.collect(selection_set, type_name, &mut collected, 0);
        }
        let mut completed = IndexMap::with_capacity(collected.len());
        for (key, fields) in collected {
            let value = map.swap_remove(key).unwrap_or(ConstValue::Null);
            let name = fields[0].name.node.as_str();
            let Some(field_type) = field_types.get(name) else {
                // `__typename`, `__schema`, `__type`: not in the SDL, never failing.
                completed.insert(Name::new(key), value);
                continue;
            };
            let sub_selections: Vec<&'a SelectionSet> = fields
                .iter()
                .map(|field| &field.selection_set.node)
                .collect();
            let value = self.value(value, field_type, &sub_selections);
            if value == ConstValue::Null && !field_type.nullable {
                return ConstValue::Null;
            }
            completed.insert(Name::new(key), value);
        }
        // Nothing should remain; if something does, keep it rather than lose it.
        completed.extend(map);
        ConstValue::Object(completed)
    }

    fn value(
        &self,
        value: ConstValue,
        ty: &Type,
        selection_sets: &[&'a SelectionSet],
    ) -> ConstValue {
        match (value, &ty.base) {
            (ConstValue::List(items), BaseType::List(item_type)) => {
                let mut completed = Vec::with_capacity(items.len());
                for item in items {
                    let item = self.value(item, item_type, selection_sets);
                    if item == ConstValue::Null && !item_type.nullable {
                        return ConstValue::Null;
                    }
                    completed.push(item);
                }
                ConstValue::List(completed)
            }
            (ConstValue::Object(map), BaseType::Named(name)) => {
                self.object(map, name.as_str(), selection_sets)
            }
            (other, _) => other,
        }
    }

    /// The fields of `selection_set` on `type_name`, in order, through fragments,
    /// without those `@skip`ped or not `@include`d.
    fn collect(
        &self,
        selection_set: &'a SelectionSet,
        type_name: &str,
        collected: &mut CollectedFields<'a>,
        nesting: usize,
    ) {
        if nesting > MAX_NESTING {
            return;
        }
        for item in &selection_set.items {
            if !self.included(item.node.directives()) {
                continue;
            }
            match &item.node {
                Selection::Field(field) => {
                    let field = &field.node;
                    let key = field.response_key().node.as_str();
                    match collected.iter_mut().find(|(seen, _)| *seen == key) {
                        Some((_, fields)) => fields.push(field),
                        None => collected.push((key, vec![field])),
                    }
                }
                Selection::InlineFragment(fragment) => {
                    let applies = fragment
                        .node
                        .type_condition
                        .as_ref()
                        .is_none_or(|condition| condition.node.on.node == type_name);
                    if applies {
                        self.collect(
                            &fragment.node.selection_set.node,
                            type_name,
                            collected,
                            nesting + 1,
                        );
                    }
                }
                Selection::FragmentSpread(spread) => {
                    let Some(fragment) =
                        self.document.fragments.get(&spread.node.fragment_name.node)
                    else {
                        continue;
                    };
                    if fragment.node.type_condition.node.on.node == type_name {
                        self.collect(
                            &fragment.node.selection_set.node,
                            type_name,
                            collected,
                            nesting + 1,
                        );
                    }
                }
            }
        }
    }

    fn included(
        &self,
        directives: &[async_graphql::Positioned<async_graphql::parser::types::Directive>],
    ) -> bool {
        directives.iter().all(|directive| {
            let wanted = match directive.node.name.node.as_str() {
                "skip" => false,
                "include" => true,
                _ => return true,
            };
            let condition = directive
                .node
                .get_argument("if")
                .map(|value| self.resolve(&value.node))
                .unwrap_or(ConstValue::Boolean(false));
            (condition == ConstValue::Boolean(true)) == wanted
        })
    }

    fn resolve(&self, value: &Value) -> ConstValue {
        value
            .clone()
            .into_const_with(|name| self.variables.get(&name).cloned().ok_or(()))
            .unwrap_or(ConstValue::Null)
    }
}

#[cfg(test)]
mod tests {
    use async_graphql::parser::parse_query;
    use serde_json::json;

    use super::*;

    /// The completed data as the answer's JSON text (key order included).
    fn run_text(query: &str, data: serde_json::Value, variables: serde_json::Value) -> String {
        let document = parse_query(query).unwrap();
        let data = ConstValue::from_json(data).unwrap();
        let variables = Variables::from_json(variables);
        serde_json::to_string(&complete(data, &document, None, &variables)).unwrap()
    }

    fn run(
        query: &str,
        data: serde_json::Value,
        variables: serde_json::Value,
    ) -> serde_json::Value {
        serde_json::from_str(&run_text(query, data, variables)).unwrap()
    }

    #[test]
    fn fields_come_back_in_selection_order() {
        let out = run_text(
            "{ contact(id: 1) { phoneNumber id email } }",
            json!({"contact": {"email": "a@x.io", "id": 1, "phoneNumber": "1"}}),
            json!({}),
        );
        assert_eq!(
            out,
            r#"{"contact":{"phoneNumber":"1","id":1,"email":"a@x.io"}}"#
        );
    }

    #[test]
    fn a_failed_non_null_field_nulls_the_nearest_nullable_parent() {
        // `primary: Contact!` failed and was left out: `contact` (nullable) is null.
        let out = run(
            "{ contact(id: 2) { id primary { id } } other: contact(id: 2) { id } }",
            json!({"contact": {"id": 2}, "other": {"id": 2}}),
            json!({}),
        );
        assert_eq!(out, json!({"contact": null, "other": {"id": 2}}));
        // A failed nullable field is present, as null.
        let out = run(
            "{ contact(id: 2) { linkedId id } }",
            json!({"contact": {"id": 2}}),
            json!({}),
        );
        assert_eq!(out, json!({"contact": {"linkedId": null, "id": 2}}));
        // Through a non-null list of non-null items, up to the nullable root field.
        let out = run(
            "{ contacts { nodes { id primary { id } } } }",
            json!({"contacts": {"nodes": [{"id": 1, "primary": {"id": 1}}, {"id": 2}]}}),
            json!({}),
        );
        assert_eq!(
            out,
            json!(null),
            "contacts is non-null: data itself is null"
        );
    }

    #[test]
    fn fragments_and_directives_are_followed() {
        let out = run_text(
            "query($skip: Boolean!) { contact(id: 1) { ...F email @skip(if: $skip) ... on Contact { phoneNumber } } }
             fragment F on Contact { id }",
            json!({"contact": {"phoneNumber": "1", "id": 1}}),
            json!({"skip": true}),
        );
        assert_eq!(out, r#"{"contact":{"id":1,"phoneNumber":"1"}}"#);
    }
}
