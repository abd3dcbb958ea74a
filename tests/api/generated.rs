//! Generated files stay what they were generated from: `src/db/schema.rs` must be
//! exactly what `diesel print-schema` (diesel_cli 2.3, with the repository's
//! `diesel.toml`) prints for the database the migrations create. The test renders
//! that text itself from the migrated database's catalog — tables, columns and
//! their types, primary keys, foreign keys, custom SQL types — and compares it with
//! the whole file, so a column or table a migration adds fails it until the file
//! is regenerated.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use diesel::QueryableByName;
use diesel::sql_types::{Array, Int4, Nullable, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use crate::helpers::TestDatabase;

/// The schema print-schema describes when diesel.toml names none.
const SCHEMA: &str = "public";

/// rustfmt's `max_width`: print-schema passes its output through rustfmt.
const MAX_WIDTH: usize = 100;

/// The SQL types diesel has a type for (by the name print-schema gives them): a
/// column of any other type gets a struct in `sql_types` (diesel_cli's
/// `pg_diesel_types`).
#[rustfmt::skip]
const DIESEL_PROVIDED_TYPES: &[&str] = &[
    "Bool", "Integer", "SmallInt", "BigInt", "Binary", "Text", "Double", "Float", "Numeric",
    "Timestamp", "Date", "Time", "Float4", "Smallint", "Int2", "Int4", "Int8", "Bigint",
    "Float8", "Decimal", "VarChar", "Varchar", "Char", "Tinytext", "Mediumtext", "Longtext",
    "Tinyblob", "Blob", "Mediumblob", "Longblob", "Varbinary", "Bit", "Cidr", "Citext", "Inet",
    "Jsonb", "MacAddr", "MacAddr8", "Money", "Oid", "Range", "Timestamptz", "Uuid", "Json",
    "PgLsn", "Record", "Interval", "Int4range", "Int8range", "Daterange", "Numrange", "Tsrange",
    "Tstzrange", "Int4multirange", "Int8multirange", "Datemultirange", "Nummultirange",
    "Tsmultirange", "Tstzmultirange", "SmallSerial", "BigSerial", "Serial", "Bytea", "Bpchar",
    "Macaddr", "Macaddr8",
];

/// Names print-schema does not use as Rust names: it appends `_` and keeps the SQL
/// name in `#[sql_name = "…"]`.
#[rustfmt::skip]
const RESERVED_NAMES: &[&str] = &[
    "_", "abstract", "as", "async", "await", "become", "box", "break", "const", "continue",
    "crate", "do", "dyn", "else", "enum", "extern", "false", "final", "fn", "for", "gen", "if",
    "impl", "in", "let", "loop", "macro", "match", "mod", "move", "mut", "override", "priv",
    "pub", "ref", "return", "Self", "self", "static", "struct", "super", "trait", "true", "try",
    "type", "typeof", "unsafe", "unsized", "use", "virtual", "where", "while", "yield", "table",
    "columns", "is_nullable",
];

#[derive(QueryableByName)]
struct TableRow {
    #[diesel(sql_type = Text)]
    table_name: String,
}

#[derive(QueryableByName)]
struct ColumnRow {
    #[diesel(sql_type = Text)]
    table_name: String,
    #[diesel(sql_type = Text)]
    column_name: String,
    #[diesel(sql_type = Text)]
    udt_name: String,
    #[diesel(sql_type = Text)]
    udt_schema: String,
    #[diesel(sql_type = Text)]
    is_nullable: String,
    #[diesel(sql_type = Nullable<Int4>)]
    max_length: Option<i32>,
}

#[derive(QueryableByName)]
struct KeyColumnRow {
    #[diesel(sql_type = Text)]
    table_name: String,
    #[diesel(sql_type = Text)]
    column_name: String,
}

/// The foreign keys from one table to another, as diesel_cli loads them: every
/// constraint between the two tables in one row.
#[derive(QueryableByName)]
struct ForeignKeyRow {
    #[diesel(sql_type = Text)]
    child_table: String,
    #[diesel(sql_type = Text)]
    parent_table: String,
    #[diesel(sql_type = Array<Text>)]
    child_columns: Vec<String>,
    #[diesel(sql_type = Array<Text>)]
    parent_columns: Vec<String>,
}

#[derive(QueryableByName)]
struct EnumRow {
    #[diesel(sql_type = Text)]
    type_name: String,
}

struct ColumnInfo {
    name: String,
    /// `udt_name`: arrays are the element type's name with a leading `_`.
    type_name: String,
    type_schema: String,
    nullable: bool,
    max_length: Option<i32>,
}

struct TableInfo {
    name: String,
    primary_key: Vec<String>,
    columns: Vec<ColumnInfo>,
}

/// The SQL type of a column as print-schema names it.
struct SqlTypeName {
    sql_name: String,
    rust_name: String,
    /// Only when not [`SCHEMA`] (`xid8` is `pg_catalog`'s).
    schema: Option<String>,
    is_array: bool,
}

impl ColumnInfo {
    fn sql_type(&self) -> SqlTypeName {
        let (is_array, name) = match self.type_name.strip_prefix('_') {
            Some(element) => (true, element),
            None => (false, self.type_name.as_str()),
        };
        SqlTypeName {
            sql_name: name.to_owned(),
            rust_name: upper_camel_case(name),
            schema: (self.type_schema != SCHEMA).then(|| self.type_schema.clone()),
            is_array,
        }
    }

    /// The type after `->`: diesel cannot know that no array element is null.
    fn diesel_type(&self) -> String {
        let sql_type = self.sql_type();
        let mut diesel_type = sql_type.rust_name;
        if sql_type.is_array {
            diesel_type = format!("Array<Nullable<{diesel_type}>>");
        }
        if self.nullable {
            diesel_type = format!("Nullable<{diesel_type}>");
        }
        diesel_type
    }
}

/// heck's `to_upper_camel_case`, which print-schema names SQL types with:
/// `link_precedence` → `LinkPrecedence`, `xid8` → `Xid8`.
fn upper_camel_case(name: &str) -> String {
    let mut out = String::new();
    for word in name.split(|c: char| !c.is_alphanumeric()) {
        let chars: Vec<char> = word.chars().collect();
        let mut start = 0;
        for end in 1..=chars.len() {
            let boundary = end == chars.len()
                || (chars[end - 1].is_lowercase() && chars[end].is_uppercase())
                || (end + 1 < chars.len()
                    && chars[end - 1].is_uppercase()
                    && chars[end].is_uppercase()
                    && chars[end + 1].is_lowercase());
            if boundary {
                if let Some((first, rest)) = chars[start..end].split_first() {
                    out.extend(first.to_uppercase());
                    out.extend(rest.iter().flat_map(|c| c.to_lowercase()));
                }
                start = end;
            }
        }
    }
    out
}

/// The Rust name print-schema gives a table or column: characters an identifier
/// cannot hold become `_`, and a reserved name (or a column named like its table)
/// gets a trailing `_`.
fn rust_name(sql_name: &str, table: Option<&str>) -> String {
    let mut name = String::new();
    let mut last_was_underscore = false;
    for (index, c) in sql_name.chars().enumerate() {
        if index == 0 && c.is_ascii_digit() {
            name.push('_');
        }
        if c.is_ascii_alphanumeric() || c == '_' {
            name.push(c);
            last_was_underscore = false;
        } else {
            if !last_was_underscore {
                name.push('_');
            }
            last_was_underscore = true;
        }
    }
    let reserved = RESERVED_NAMES.contains(&name.as_str())
        || (name.starts_with("__") && !name.ends_with('_'))
        || table == Some(name.as_str());
    if reserved {
        name.push('_');
    }
    name
}

/// A string literal as print-schema writes one.
fn rust_string(value: &str) -> String {
    if value.contains('"') {
        let hashes = "#".repeat(value.matches('#').count() + 1);
        format!("r{hashes}\"{value}\"{hashes}")
    } else {
        format!("\"{value}\"")
    }
}

/// The derives of every `sql_types` struct, from diesel.toml's `[print_schema]`,
/// whose other options this rendering does not know and so refuses.
fn custom_type_derives(diesel_toml: &str) -> Vec<String> {
    let mut section = "";
    let mut derives = Vec::new();
    for line in diesel_toml.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line
            .strip_prefix('[')
            .and_then(|rest| rest.strip_suffix(']'))
        {
            section = name.trim();
            continue;
        }
        if section != "print_schema" {
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("diesel.toml: cannot read `{line}`"));
        match key.trim() {
            "file" => assert_eq!(
                value.trim(),
                "\"src/db/schema.rs\"",
                "diesel.toml: print-schema writes another file than the one this test checks"
            ),
            "custom_type_derives" => {
                let list = value
                    .trim()
                    .strip_prefix('[')
                    .and_then(|rest| rest.strip_suffix(']'))
                    .unwrap_or_else(|| {
                        panic!("diesel.toml: keep custom_type_derives on one line: `{line}`")
                    });
                derives = list
                    .split(',')
                    .map(|derive| derive.trim().trim_matches('"').to_owned())
                    .filter(|derive| !derive.is_empty())
                    .collect();
            }
            other => panic!(
                "diesel.toml sets print_schema.{other}, which changes what `diesel print-schema` \
                 prints: teach the rendering in tests/api/generated.rs"
            ),
        }
    }
    if !derives
        .iter()
        .any(|derive| derive == "diesel::sql_types::SqlType")
    {
        derives.push("diesel::sql_types::SqlType".to_owned());
    }
    derives
}

/// The two tables a foreign key joins, in either direction.
fn table_pair(fk: &ForeignKeyRow) -> [&str; 2] {
    let mut pair = [fk.child_table.as_str(), fk.parent_table.as_str()];
    pair.sort_unstable();
    pair
}

/// The foreign keys print-schema writes `joinable!` for: single-column, to the
/// parent's single-column primary key, between two different tables (it skips
/// self-references such as `contacts.linked_id`), and the only ones between them.
fn joinables(tables: &[TableInfo], foreign_keys: &[ForeignKeyRow]) -> Vec<String> {
    let table = |name: &str| tables.iter().find(|table| table.name == name);
    let mut lines = Vec::new();
    for fk in foreign_keys {
        let (Some(child), Some(parent)) = (table(&fk.child_table), table(&fk.parent_table)) else {
            continue;
        };
        let joinable = fk.child_table != fk.parent_table
            && fk.child_columns.len() == 1
            && parent.primary_key.len() == 1
            && <[String]>::first(&fk.parent_columns) == <[String]>::first(&parent.primary_key)
            && foreign_keys
                .iter()
                .filter(|other| table_pair(other) == table_pair(fk))
                .count()
                == 1;
        if joinable {
            let child_name = rust_name(&child.name, None);
            lines.push(format!(
                "diesel::joinable!({} -> {} ({}));",
                child_name,
                rust_name(&parent.name, None),
                rust_name(&fk.child_columns[0], Some(child_name.as_str())),
            ));
        }
    }
    lines
}

/// The text `diesel print-schema` prints, after its rustfmt pass.
fn render(tables: &[TableInfo], foreign_keys: &[ForeignKeyRow], derives: &[String]) -> String {
    let mut out = String::from("// @generated automatically by Diesel CLI.\n\n");

    // One struct per type diesel has none for, by Rust name.
    let mut custom_types: BTreeMap<String, SqlTypeName> = BTreeMap::new();
    for column in tables.iter().flat_map(|table| &table.columns) {
        let sql_type = column.sql_type();
        if !DIESEL_PROVIDED_TYPES.contains(&sql_type.rust_name.as_str()) {
            custom_types
                .entry(sql_type.rust_name.clone())
                .or_insert(sql_type);
        }
    }
    if !custom_types.is_empty() {
        out.push_str("pub mod sql_types {\n");
        for (index, sql_type) in custom_types.values().enumerate() {
            if index != 0 {
                out.push('\n');
            }
            writeln!(out, "    #[derive({})]", derives.join(", ")).unwrap();
            let name = rust_string(&sql_type.sql_name);
            match &sql_type.schema {
                Some(schema) => writeln!(
                    out,
                    "    #[diesel(postgres_type(name = {name}, schema = {}))]",
                    rust_string(schema)
                )
                .unwrap(),
                None => writeln!(out, "    #[diesel(postgres_type(name = {name}))]").unwrap(),
            }
            writeln!(out, "    pub struct {};", sql_type.rust_name).unwrap();
        }
        out.push_str("}\n\n");
    }

    for (index, table) in tables.iter().enumerate() {
        if index != 0 {
            out.push('\n');
        }
        out.push_str("diesel::table! {\n");
        let mut imported: Vec<String> = Vec::new();
        for column in &table.columns {
            let sql_type = column.sql_type();
            if custom_types.contains_key(&sql_type.rust_name)
                && !imported.contains(&sql_type.rust_name)
            {
                if imported.is_empty() {
                    out.push_str("    use diesel::sql_types::*;\n");
                }
                writeln!(out, "    use super::sql_types::{};", sql_type.rust_name).unwrap();
                imported.push(sql_type.rust_name);
            }
        }
        if !imported.is_empty() {
            out.push('\n');
        }
        let table_name = rust_name(&table.name, None);
        if table_name != table.name {
            writeln!(out, "    #[sql_name = {}]", rust_string(&table.name)).unwrap();
        }
        let primary_key: Vec<String> = table
            .primary_key
            .iter()
            .map(|column| rust_name(column, Some(table_name.as_str())))
            .collect();
        writeln!(out, "    {table_name} ({}) {{", primary_key.join(", ")).unwrap();
        for column in &table.columns {
            let column_name = rust_name(&column.name, Some(table_name.as_str()));
            if column_name != column.name {
                writeln!(out, "        #[sql_name = {}]", rust_string(&column.name)).unwrap();
            }
            if let Some(max_length) = column.max_length {
                writeln!(out, "        #[max_length = {max_length}]").unwrap();
            }
            writeln!(out, "        {column_name} -> {},", column.diesel_type()).unwrap();
        }
        out.push_str("    }\n}\n");
    }

    let joinable_lines = joinables(tables, foreign_keys);
    if !joinable_lines.is_empty() {
        out.push('\n');
        for joinable in &joinable_lines {
            writeln!(out, "{joinable}").unwrap();
        }
    }

    if tables.len() >= 2 {
        let names: Vec<String> = tables
            .iter()
            .map(|table| rust_name(&table.name, None))
            .collect();
        out.push('\n');
        // rustfmt keeps the list on one line when it fits (the trailing comma aside).
        let one_line = format!(
            "diesel::allow_tables_to_appear_in_same_query!({});",
            names.join(", ")
        );
        if one_line.len() <= MAX_WIDTH {
            writeln!(
                out,
                "diesel::allow_tables_to_appear_in_same_query!({},);",
                names.join(", ")
            )
            .unwrap();
        } else {
            out.push_str("diesel::allow_tables_to_appear_in_same_query!(\n");
            for name in &names {
                writeln!(out, "    {name},").unwrap();
            }
            out.push_str(");\n");
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_rs_describes_the_migrated_tables() {
    let database = TestDatabase::create().await;
    let mut conn = AsyncPgConnection::establish(&database.url).await.unwrap();
    let schema_rs = include_str!("../../src/db/schema.rs");
    let derives = custom_type_derives(include_str!("../../diesel.toml"));

    // Tables of the schema but diesel's own `__diesel_schema_migrations`, by name.
    let table_rows: Vec<TableRow> = diesel::sql_query(
        r"SELECT table_name::text AS table_name FROM information_schema.tables
          WHERE table_schema = $1 AND table_type = 'BASE TABLE'
            AND table_name NOT LIKE '\_\_%'",
    )
    .bind::<Text, _>(SCHEMA)
    .load(&mut conn)
    .await
    .unwrap();
    let mut table_names: Vec<String> = table_rows.into_iter().map(|row| row.table_name).collect();
    table_names.sort_unstable();
    assert!(!table_names.is_empty(), "the migrations created no table");

    let column_rows: Vec<ColumnRow> = diesel::sql_query(
        "SELECT table_name::text AS table_name, column_name::text AS column_name, \
                udt_name::text AS udt_name, udt_schema::text AS udt_schema, \
                is_nullable::text AS is_nullable, character_maximum_length::int4 AS max_length \
         FROM information_schema.columns WHERE table_schema = $1 \
         ORDER BY table_name, ordinal_position",
    )
    .bind::<Text, _>(SCHEMA)
    .load(&mut conn)
    .await
    .unwrap();
    let mut columns: BTreeMap<String, Vec<ColumnInfo>> = BTreeMap::new();
    for row in column_rows {
        columns.entry(row.table_name).or_default().push(ColumnInfo {
            name: row.column_name,
            type_name: row.udt_name,
            type_schema: row.udt_schema,
            nullable: row.is_nullable == "YES",
            max_length: row.max_length,
        });
    }

    let key_rows: Vec<KeyColumnRow> = diesel::sql_query(
        "SELECT kcu.table_name::text AS table_name, kcu.column_name::text AS column_name \
         FROM information_schema.table_constraints tc \
         JOIN information_schema.key_column_usage kcu \
           ON kcu.constraint_schema = tc.constraint_schema \
          AND kcu.constraint_name = tc.constraint_name \
          AND kcu.table_schema = tc.table_schema AND kcu.table_name = tc.table_name \
         WHERE tc.constraint_type = 'PRIMARY KEY' AND tc.table_schema = $1 \
         ORDER BY kcu.table_name, kcu.ordinal_position",
    )
    .bind::<Text, _>(SCHEMA)
    .load(&mut conn)
    .await
    .unwrap();
    let mut primary_keys: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for row in key_rows {
        primary_keys
            .entry(row.table_name)
            .or_default()
            .push(row.column_name);
    }

    let mut foreign_keys: Vec<ForeignKeyRow> = diesel::sql_query(
        "SELECT tbl.relname::text AS child_table, f_tbl.relname::text AS parent_table, \
                array_agg(col.attname::text ORDER BY u.position) AS child_columns, \
                array_agg(f_col.attname::text ORDER BY u.position) AS parent_columns \
         FROM pg_constraint c \
         CROSS JOIN LATERAL unnest(c.conkey, c.confkey) WITH ORDINALITY \
              AS u(attnum, f_attnum, position) \
         JOIN pg_class tbl ON tbl.oid = c.conrelid \
         JOIN pg_namespace sch ON sch.oid = tbl.relnamespace \
         JOIN pg_attribute col ON col.attrelid = tbl.oid AND col.attnum = u.attnum \
         JOIN pg_class f_tbl ON f_tbl.oid = c.confrelid \
         JOIN pg_namespace f_sch ON f_sch.oid = f_tbl.relnamespace \
         JOIN pg_attribute f_col ON f_col.attrelid = f_tbl.oid AND f_col.attnum = u.f_attnum \
         WHERE c.contype = 'f' AND sch.nspname = $1 AND f_sch.nspname = $1 \
         GROUP BY tbl.relname, f_tbl.relname",
    )
    .bind::<Text, _>(SCHEMA)
    .load(&mut conn)
    .await
    .unwrap();
    foreign_keys.sort_by(|a, b| {
        (&a.child_table, &a.parent_table, &a.child_columns).cmp(&(
            &b.child_table,
            &b.parent_table,
            &b.child_columns,
        ))
    });

    let tables: Vec<TableInfo> = table_names
        .into_iter()
        .map(|name| {
            let primary_key = primary_keys.remove(&name).unwrap_or_default();
            assert!(
                !primary_key.is_empty(),
                "table {name} has no primary key: `diesel print-schema` cannot describe it"
            );
            let columns = columns
                .remove(&name)
                .unwrap_or_else(|| panic!("table {name} has no columns"));
            TableInfo {
                name,
                primary_key,
                columns,
            }
        })
        .collect();

    let rendered = render(&tables, &foreign_keys, &derives);

    // Every enum type a column uses has its struct (the renderer's list of types
    // diesel provides must not swallow one).
    let enum_rows: Vec<EnumRow> = diesel::sql_query(
        "SELECT t.typname::text AS type_name FROM pg_type t \
         JOIN pg_namespace n ON n.oid = t.typnamespace \
         WHERE t.typtype = 'e' AND n.nspname = $1 ORDER BY 1",
    )
    .bind::<Text, _>(SCHEMA)
    .load(&mut conn)
    .await
    .unwrap();
    let used_types: BTreeSet<String> = tables
        .iter()
        .flat_map(|table| &table.columns)
        .filter(|column| column.type_schema == SCHEMA)
        .map(|column| column.sql_type().sql_name)
        .collect();
    for row in enum_rows
        .iter()
        .filter(|row| used_types.contains(&row.type_name))
    {
        let declaration = format!(
            "#[diesel(postgres_type(name = {}))]\n    pub struct {};",
            rust_string(&row.type_name),
            upper_camel_case(&row.type_name)
        );
        assert!(
            rendered.contains(&declaration),
            "enum {} is used by a column but the rendering declares no sql_types struct for it",
            row.type_name
        );
    }

    if rendered != schema_rs {
        let line = rendered
            .lines()
            .zip(schema_rs.lines())
            .position(|(expected, found)| expected != found)
            .unwrap_or_else(|| rendered.lines().count().min(schema_rs.lines().count()));
        panic!(
            "src/db/schema.rs is not what `diesel print-schema` prints for the migrated database.\n\
             First difference, line {}:\n    schema.rs: {:?}\n    expected:  {:?}\n\n\
             Regenerate it with diesel_cli 2.3 from the repository root: `diesel migration run` \
             on an empty database rewrites it (diesel.toml's print_schema.file), as does \
             `diesel print-schema > src/db/schema.rs` on a migrated one. Or replace the file \
             with this rendering of it:\n\
             ----- 8< ----- src/db/schema.rs -----\n{rendered}----- >8 -----",
            line + 1,
            schema_rs.lines().nth(line).unwrap_or("<end of file>"),
            rendered.lines().nth(line).unwrap_or("<end of file>"),
        );
    }
}
