//! The pieces every part of a run reports with: a named check and its violations,
//! latency percentiles, an error with its causes on one line. They depend on nothing
//! else of the load generator, so the client, the model, the checks and the summary
//! can all use them without importing one another.

use std::error::Error as StdError;
use std::fmt::{self, Write as _};

use hdrhistogram::Histogram;
use serde::Serialize;
use serde::ser::SerializeStruct;

/// How many violations each check quotes.
const EXAMPLES: usize = 5;

/// An error and its causes on one line: many errors (hyper's, tokio-postgres's) say
/// what failed only in their sources.
pub fn error_chain(err: &(dyn StdError + 'static)) -> String {
    let mut text = err.to_string();
    for cause in std::iter::successors(err.source(), |&cause| cause.source()) {
        let cause = cause.to_string();
        // Some errors repeat their cause in their own message.
        if !text.contains(&cause) {
            write!(text, ": {cause}").ok();
        }
    }
    text
}

/// One named check: how many violations it found, and the first few.
#[derive(Clone, Debug)]
pub struct Check {
    pub name: &'static str,
    pub violations: u64,
    pub examples: Vec<String>,
}

impl Check {
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            violations: 0,
            examples: Vec::new(),
        }
    }

    /// Counts a violation; `example` is only built while examples are still wanted.
    pub fn violation(&mut self, example: impl FnOnce() -> String) {
        self.violations += 1;
        if self.examples.len() < EXAMPLES {
            self.examples.push(example());
        }
    }

    pub fn passed(&self) -> bool {
        self.violations == 0
    }

    pub fn merge(&mut self, other: Check) {
        self.violations += other.violations;
        let room = EXAMPLES.saturating_sub(self.examples.len());
        self.examples.extend(other.examples.into_iter().take(room));
    }
}

impl Serialize for Check {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut check = serializer.serialize_struct("Check", 4)?;
        check.serialize_field("name", self.name)?;
        check.serialize_field("passed", &self.passed())?;
        check.serialize_field("violations", &self.violations)?;
        check.serialize_field("examples", &self.examples)?;
        check.end()
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.passed() {
            return writeln!(f, "  PASS  {}", self.name);
        }
        let plural = if self.violations == 1 { "" } else { "s" };
        writeln!(
            f,
            "  FAIL  {}: {} violation{plural}",
            self.name, self.violations
        )?;
        for example in &self.examples {
            writeln!(f, "          - {example}")?;
        }
        Ok(())
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Latency {
    /// `None` when nothing was recorded.
    pub fn from_micros(histogram: &Histogram<u64>) -> Option<Self> {
        if histogram.is_empty() {
            return None;
        }
        let ms = |micros: u64| micros as f64 / 1000.0;
        Some(Self {
            p50: ms(histogram.value_at_quantile(0.50)),
            p90: ms(histogram.value_at_quantile(0.90)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p999: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
        })
    }
}
