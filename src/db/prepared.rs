//! Hand-written SQL that diesel prepares once per connection.
//!
//! `diesel::sql_query` is never put in the statement cache, so every use of it costs
//! an extra round trip (Parse/Describe) and a fresh plan. A [`Prepared`] query names
//! its SQL with a marker type, which gives it a static query id: diesel-async then
//! prepares it once per connection and afterwards only binds and executes.

use std::marker::PhantomData;

use diesel::QueryResult;
use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::serialize::ToSql;
use diesel::sql_types::{HasSqlType, Untyped};

/// A marker type standing for one SQL text, with placeholders `$1`, `$2`, ... for
/// its bind values (a placeholder may appear more than once).
pub trait StaticSql: Send + Sync + 'static {
    const SQL: &'static str;
}

/// One bind value with its SQL type.
pub struct Bind<ST, T>(pub T, PhantomData<ST>);

impl<ST, T> Bind<ST, T> {
    pub fn new(value: T) -> Self {
        Self(value, PhantomData)
    }
}

/// The bind values of a query, in placeholder order.
pub trait Binds: Send {
    fn push<'b>(&'b self, index: usize, out: &mut AstPass<'_, 'b, Pg>) -> QueryResult<()>;
}

impl Binds for () {
    fn push<'b>(&'b self, index: usize, _out: &mut AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        Err(diesel::result::Error::QueryBuilderError(
            format!("placeholder ${} has no bind value", index + 1).into(),
        ))
    }
}

macro_rules! impl_binds {
    ($(($st:ident, $t:ident, $i:tt)),+) => {
        impl<$($st, $t),+> Binds for ($(Bind<$st, $t>,)+)
        where
            $(Pg: HasSqlType<$st>, $t: ToSql<$st, Pg> + Send, $st: Send,)+
        {
            fn push<'b>(&'b self, index: usize, out: &mut AstPass<'_, 'b, Pg>) -> QueryResult<()> {
                match index {
                    $($i => out.push_bind_param::<$st, $t>(&self.$i.0),)+
                    _ => Err(diesel::result::Error::QueryBuilderError(
                        format!("placeholder ${} has no bind value", index + 1).into(),
                    )),
                }
            }
        }
    };
}

impl_binds!((S0, T0, 0));
impl_binds!((S0, T0, 0), (S1, T1, 1));
impl_binds!((S0, T0, 0), (S1, T1, 1), (S2, T2, 2));
impl_binds!((S0, T0, 0), (S1, T1, 1), (S2, T2, 2), (S3, T3, 3));
impl_binds!(
    (S0, T0, 0),
    (S1, T1, 1),
    (S2, T2, 2),
    (S3, T3, 3),
    (S4, T4, 4)
);
impl_binds!(
    (S0, T0, 0),
    (S1, T1, 1),
    (S2, T2, 2),
    (S3, T3, 3),
    (S4, T4, 4),
    (S5, T5, 5)
);
impl_binds!(
    (S0, T0, 0),
    (S1, T1, 1),
    (S2, T2, 2),
    (S3, T3, 3),
    (S4, T4, 4),
    (S5, T5, 5),
    (S6, T6, 6)
);
impl_binds!(
    (S0, T0, 0),
    (S1, T1, 1),
    (S2, T2, 2),
    (S3, T3, 3),
    (S4, T4, 4),
    (S5, T5, 5),
    (S6, T6, 6),
    (S7, T7, 7)
);

/// The query `M::SQL` with `binds`.
pub struct Prepared<M, B> {
    binds: B,
    marker: PhantomData<M>,
}

impl<M: StaticSql, B: Binds> Prepared<M, B> {
    pub fn new(binds: B) -> Self {
        Self {
            binds,
            marker: PhantomData,
        }
    }
}

impl<M: StaticSql, B: Binds> QueryFragment<Pg> for Prepared<M, B> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        let sql = M::SQL;
        let mut copied = 0;
        for (at, number) in placeholders(sql) {
            out.push_sql(&sql[copied..at.start]);
            // Each occurrence becomes a bind of its own, numbered by diesel.
            self.binds.push(number - 1, &mut out)?;
            copied = at.end;
        }
        out.push_sql(&sql[copied..]);
        Ok(())
    }
}

/// Where `$n` placeholders are in `sql`, with their numbers. A `$` inside a string
/// literal, a quoted identifier, a comment or a dollar-quoted string is text, not a
/// placeholder.
fn placeholders(sql: &str) -> Vec<(std::ops::Range<usize>, usize)> {
    let bytes = sql.as_bytes();
    let end_of = |from: usize, pattern: &str| {
        sql[from..]
            .find(pattern)
            .map_or(sql.len(), |at| from + at + pattern.len())
    };
    let mut found = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            quote @ (b'\'' | b'"') => {
                // A doubled quote is an escaped one, inside the literal.
                i += 1;
                while i < bytes.len() {
                    if bytes[i] == quote {
                        if bytes.get(i + 1) == Some(&quote) {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i += 1;
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => i = end_of(i, "\n"),
            b'/' if bytes.get(i + 1) == Some(&b'*') => i = end_of(i + 2, "*/"),
            b'$' => {
                let digits = bytes[i + 1..]
                    .iter()
                    .take_while(|b| b.is_ascii_digit())
                    .count();
                if digits > 0 {
                    let number = sql[i + 1..i + 1 + digits].parse().unwrap_or(0);
                    if number > 0 {
                        found.push((i..i + 1 + digits, number));
                    }
                    i += 1 + digits;
                    continue;
                }
                // `$$` or `$tag$` opens a dollar-quoted string, closed by the same tag.
                let tag_len = bytes[i + 1..]
                    .iter()
                    .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_')
                    .count();
                if bytes.get(i + 1 + tag_len) == Some(&b'$') {
                    let tag = &sql[i..i + 2 + tag_len];
                    i = end_of(i + tag.len(), tag);
                } else {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    found
}

impl<M: StaticSql, B> QueryId for Prepared<M, B> {
    type QueryId = M;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl<M: StaticSql, B: Binds> Query for Prepared<M, B> {
    type SqlType = Untyped;
}

/// Declares a marker type for one SQL text.
macro_rules! static_sql {
    ($(#[$meta:meta])* $name:ident = $sql:expr) => {
        $(#[$meta])*
        pub struct $name;

        impl $crate::db::prepared::StaticSql for $name {
            const SQL: &'static str = $sql;
        }
    };
}
pub(crate) use static_sql;

static_sql!(BeginSql = "BEGIN");
static_sql!(CommitSql = "COMMIT");

/// `BEGIN` as a prepared statement, for a transaction sent as one pipeline (see
/// `app::identify::insert_if_still_new`). A simple-protocol BEGIN would skip the statement
/// cache's queue and could overtake a statement still being prepared; diesel's
/// transaction manager is not told, so the pipeline must end with [`commit`].
pub async fn begin(mut conn: &diesel_async::AsyncPgConnection) -> QueryResult<()> {
    use diesel_async::RunQueryDsl;
    Prepared::<BeginSql, _>::new(()).execute(&mut conn).await?;
    Ok(())
}

/// `COMMIT` as a prepared statement; see [`begin`]. After a failed statement it
/// rolls back (PostgreSQL answers `ROLLBACK`), so the connection always leaves the
/// transaction.
pub async fn commit(mut conn: &diesel_async::AsyncPgConnection) -> QueryResult<()> {
    use diesel_async::RunQueryDsl;
    Prepared::<CommitSql, _>::new(()).execute(&mut conn).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use diesel::sql_types::{Int4, Text};

    use super::*;

    static_sql!(Example = "SELECT $1::text, $2 + 1, '$' AS dollar, $1");

    #[test]
    fn dollars_in_literals_comments_and_dollar_quotes_are_text() {
        let sql = "SELECT '$1', 'it''s $2', \"$3\", $1 -- $4\n/* $5 */ $$ $6 $$, $q$ $7 $q$, $2";
        let numbers: Vec<usize> = placeholders(sql).into_iter().map(|(_, n)| n).collect();
        assert_eq!(numbers, [1, 2]);
        let ranges: Vec<&str> = placeholders(sql)
            .into_iter()
            .map(|(range, _)| &sql[range])
            .collect();
        assert_eq!(ranges, ["$1", "$2"]);
    }

    #[test]
    fn placeholders_become_binds_in_order() {
        let query =
            Prepared::<Example, _>::new((Bind::<Text, _>::new("a"), Bind::<Int4, _>::new(1)));
        let sql = diesel::debug_query::<Pg, _>(&query).to_string();
        assert!(
            sql.starts_with("SELECT $1::text, $2 + 1, '$' AS dollar, $3"),
            "{sql}"
        );
        assert!(sql.contains(r#"binds: ["a", 1, "a"]"#), "{sql}");
    }
}
