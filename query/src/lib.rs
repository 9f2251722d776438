//! SQL for tarn: what a node accepts and how it reads time.
//!
//! The crate does no I/O. [`Select::parse`] is the gate every query passes
//! before it reaches a store: exactly one read-only SELECT (SQLite dialect),
//! bounded in size and nesting. [`time`] holds tarn's timestamp rules: UTC,
//! stored as fixed-width text so that text order is time order.
//!
//! - `select`: parsing, validation, timestamp-literal normalisation
//! - `aggregate`: splitting a grouped aggregate into scan, accumulators and a final query
//! - `plan`: splitting a query for the network ([`Prepared`] → [`Plan`]): time
//!   functions, partial queries and the final step
//! - `sum`: exact floating-point summation ([`ExactSum`])
//! - [`time`]: parsing and formatting timestamps
//!
//! ```
//! let mut q = tarn_query::Select::parse("SELECT avg(v) FROM t WHERE ts > '2024-01-01T00:00:00Z'")?;
//! q.normalize_timestamps(|col| col == "ts");
//! assert_eq!(q.to_sql(), "SELECT avg(v) FROM t WHERE ts > '2024-01-01 00:00:00.000000'");
//! assert!(tarn_query::Select::parse("DELETE FROM t").is_err());
//! # Ok::<(), tarn_query::SqlError>(())
//! ```

mod aggregate;
mod plan;
mod select;
mod sum;
pub mod time;

pub use aggregate::{Agg, AggKind, GroupedAggregate};
pub use plan::{Plan, PlanError, Prepared, Shape, rewrite_increments};
pub use select::{MAX_SQL_LEN, OutputCast, Select, SqlError};
pub use sum::ExactSum;
