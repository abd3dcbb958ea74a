//! Generated files stay what they were generated from: `src/db/schema.rs` (by
//! `diesel print-schema`) must describe the tables the migrations create.

use diesel::QueryableByName;
use diesel::sql_types::Text;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use crate::helpers::TestDatabase;

#[derive(QueryableByName)]
struct Column {
    #[diesel(sql_type = Text)]
    column_name: String,
    #[diesel(sql_type = Text)]
    data_type: String,
    #[diesel(sql_type = Text)]
    udt_name: String,
    #[diesel(sql_type = Text)]
    is_nullable: String,
}

/// The line `diesel print-schema` writes for a column.
fn diesel_line(column: &Column) -> String {
    let base = match (column.data_type.as_str(), column.udt_name.as_str()) {
        ("integer", _) => "Int4".to_owned(),
        ("text", _) => "Text".to_owned(),
        ("timestamp with time zone", _) => "Timestamptz".to_owned(),
        // diesel cannot know that no element is null.
        ("ARRAY", "_text") => "Array<Nullable<Text>>".to_owned(),
        ("USER-DEFINED", "link_precedence") => "LinkPrecedence".to_owned(),
        (other, udt) => panic!("no diesel type known for {other} ({udt})"),
    };
    let sql_type = if column.is_nullable == "YES" {
        format!("Nullable<{base}>")
    } else {
        base
    };
    format!("{} -> {sql_type},", column.column_name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_rs_describes_the_migrated_tables() {
    let database = TestDatabase::create().await;
    let mut conn = AsyncPgConnection::establish(&database.url).await.unwrap();
    let schema_rs = include_str!("../../src/db/schema.rs");
    for table in ["api_keys", "contacts"] {
        let columns: Vec<Column> = diesel::sql_query(
            "SELECT column_name::text, data_type::text, udt_name::text, is_nullable::text \
             FROM information_schema.columns WHERE table_name = $1 ORDER BY ordinal_position",
        )
        .bind::<Text, _>(table)
        .load(&mut conn)
        .await
        .unwrap();
        assert!(!columns.is_empty(), "no table {table}");
        let expected: Vec<String> = columns.iter().map(diesel_line).collect();
        let body = schema_rs
            .split(&format!("{table} (id) {{"))
            .nth(1)
            .and_then(|rest| rest.split('}').next())
            .unwrap_or_else(|| panic!("no table {table} in schema.rs"));
        let declared: Vec<String> = body
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .map(str::to_owned)
            .collect();
        assert_eq!(
            declared, expected,
            "src/db/schema.rs is out of date for {table}: regenerate it with `diesel print-schema`"
        );
    }
    assert!(schema_rs.contains(r#"#[diesel(postgres_type(name = "link_precedence"))]"#));
}
