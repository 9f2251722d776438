//! Writing batches: group commit per database, one savepoint per batch,
//! de-duplication by origin and by hash, new tables and columns, large
//! batches recorded in parts.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

use super::batches::{BatchMeta, BatchRecord, Committed, Origin, ReplBatch, Written, insert_batch};
use super::database::{Database, Job};
use super::names::{ident, user_db};
use super::schema::{
    MAX_PARAMS, NewColumns, ROWS_PER_INSERT, TableSchema, alter_sql, insert_sql, record_declared,
};
use super::{ColType, Rows, Storage, StoreError, Val};

/// About how many bytes of rows one part of a batch holds (see
/// [`Storage::write`]): well inside one replication message.
const PART_BYTES: usize = 2 << 20;

/// What [`Storage::write_one`] did with one batch.
struct Stored {
    written: Written,
    new_columns: NewColumns,
    /// The batch's new records (`almgm`, the inventory): none, or one per part.
    records: Vec<BatchRecord>,
}

impl Stored {
    fn duplicate(origin: &str, id: i64, records: Vec<BatchRecord>) -> Stored {
        Stored {
            written: Written {
                tsd_id: id,
                origin: origin.to_owned(),
                rows: 0,
                duplicate: true,
            },
            new_columns: Vec::new(),
            records,
        }
    }
}

/// Where each part of a batch starts: cut when a part's rows reach about
/// `max` bytes (at least one row a part).
fn part_starts(rows: &[Vec<Val>], max: usize) -> Vec<usize> {
    let mut starts = vec![0];
    let mut size = 0;
    for (i, row) in rows.iter().enumerate() {
        let n: usize = row.iter().map(Val::approx_size).sum();
        if size > 0 && size + n > max {
            starts.push(i);
            size = 0;
        }
        size += n;
    }
    starts
}

impl Storage {
    /// Writes one batch into `db.table`, creating the database, the table and
    /// new columns as needed. Refused whole on any bad value.
    ///
    /// Group commit: the batch joins its database's queue, and whichever
    /// caller takes the writer next commits every queued batch in one
    /// transaction (each in its own savepoint, so one bad batch does not
    /// spoil the others). A commit costs about as much as 300 rows, so this
    /// is what keeps many small concurrent batches fast.
    pub fn write(
        &self,
        db: &str,
        table: &str,
        rows: Rows,
        meta: &BatchMeta,
    ) -> Result<Written, StoreError> {
        self.enqueue(db, table, rows, meta, None, Vec::new())
    }

    /// Stores a batch another member of the cluster produced (or this node
    /// produced and lost), received from `from`. A batch already held, under
    /// its origin or under the same hash, is recorded and not stored again.
    pub fn write_replica(&self, batch: ReplBatch, from: &str) -> Result<Written, StoreError> {
        batch.validate()?;
        let hints = batch.column_types()?;
        let rows = Rows {
            columns: batch.columns.into_iter().map(|(c, _)| c).collect(),
            rows: batch.rows,
        };
        let meta = BatchMeta {
            source: batch.source,
            hash: batch.hash,
            instructions: batch.instructions,
        };
        let origin = Some((batch.origin, from.to_owned()));
        self.enqueue(&batch.db, &batch.table, rows, &meta, origin, hints)
    }

    fn enqueue(
        &self,
        db: &str,
        table: &str,
        mut rows: Rows,
        meta: &BatchMeta,
        origin: Option<(Origin, String)>,
        hints: Vec<(String, ColType)>,
    ) -> Result<Written, StoreError> {
        self.touch();
        let db_name = user_db(db)?;
        let table = ident("table", table)?;
        let existing = self
            .dbs
            .read()
            .expect("lock poisoned")
            .get(&db_name)
            .cloned();
        // Coerce before queueing: parsing timestamps and numbers is the
        // costly part, and concurrent batches do it in parallel.
        let planned = existing
            .as_ref()
            .and_then(|d| d.schema(&table))
            .unwrap_or_default();
        let replica = origin.is_some().then_some(hints.as_slice());
        let planned_cols = planned.plan_hinted(&mut rows, replica)?;
        // Only a batch that passed creates its database.
        let database = match existing {
            Some(d) => d,
            None => self.database_or_create(&db_name)?,
        };
        let (origin, from) = origin.unzip();
        let job = Arc::new(Job {
            table,
            meta: meta.clone(),
            origin,
            from: from.unwrap_or_default(),
            hints,
            work: Mutex::new(Some((rows, Arc::unwrap_or_clone(planned), planned_cols))),
            result: Mutex::new(None),
        });
        database
            .queue
            .lock()
            .expect("lock poisoned")
            .push(job.clone());
        let mut conn = database.writer();
        if let Some(done) = job.take_result() {
            return done;
        }
        let jobs: Vec<Arc<Job>> =
            std::mem::take(&mut *database.queue.lock().expect("lock poisoned"));
        let written = self.commit_group(&database, &mut conn, &jobs);
        drop(conn);
        self.after_commit(&db_name, &written);
        job.take_result()
            .expect("a group that took this job answered it")
    }

    /// What follows a commit: `almgm`, the inventory, the replicator.
    fn after_commit(&self, db: &str, written: &[BatchRecord]) {
        self.record(db, written);
        {
            let mut index = self.index.lock().expect("lock poisoned");
            written.iter().for_each(|rec| index.add(rec));
        }
        if let Some(tx) = self.committed.get() {
            for rec in written.iter().filter(|r| r.from.is_empty()) {
                // Full: the replicator is behind, and its inventory exchange
                // finds this batch anyway.
                let _ = tx.try_send(Committed {
                    db: db.to_owned(),
                    id: rec.origin.id,
                });
            }
        }
    }

    /// Writes `jobs` in one transaction and answers each of them. Returns
    /// the records of the batches written (for `almgm`).
    fn commit_group(
        &self,
        database: &Database,
        conn: &mut Connection,
        jobs: &[Arc<Job>],
    ) -> Vec<BatchRecord> {
        let now = tarn_query::time::format_storage(self.clock.now_micros());
        let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
            Ok(tx) => tx,
            Err(e) => {
                let err = StoreError::internal("starting a write", e);
                jobs.iter().for_each(|j| j.answer(Err(err.clone())));
                return Vec::new();
            }
        };
        // Schemas as this transaction changes them, published after commit.
        let mut schemas: HashMap<String, TableSchema> = HashMap::new();
        let mut answers: Vec<Result<Written, StoreError>> = Vec::with_capacity(jobs.len());
        let mut records = Vec::new();
        for job in jobs {
            let schema = schemas.entry(job.table.clone()).or_insert_with(|| {
                database
                    .schema(&job.table)
                    .map(|s| (*s).clone())
                    .unwrap_or_default()
            });
            let r = self.write_in_savepoint(&tx, job, schema, &now);
            if let Ok(stored) = &r
                && !stored.new_columns.is_empty()
            {
                *schema = schema.extended(&stored.new_columns);
            }
            answers.push(r.map(|stored| {
                records.extend(stored.records);
                stored.written
            }));
        }
        if let Err(e) = tx.commit() {
            let err = StoreError::internal("committing a batch", e);
            jobs.iter().for_each(|j| j.answer(Err(err.clone())));
            return Vec::new();
        }
        self.publish_schemas(database, schemas);
        for (job, answer) in jobs.iter().zip(answers) {
            job.answer(answer);
        }
        records
    }

    /// One batch in its own savepoint: rolled back alone if it fails.
    fn write_in_savepoint(
        &self,
        tx: &Transaction<'_>,
        job: &Job,
        schema: &TableSchema,
        now: &str,
    ) -> Result<Stored, StoreError> {
        let Some((rows, planned, planned_cols)) = job.work.lock().expect("lock poisoned").take()
        else {
            return Err(StoreError::internal("a batch", "queued twice"));
        };
        let r = (|| -> Result<Result<Stored, StoreError>, rusqlite::Error> {
            tx.execute_batch("SAVEPOINT batch")?;
            let r = self.write_one(tx, job, rows, &planned, planned_cols, schema, now);
            match &r {
                Ok(Ok(_)) => tx.execute_batch("RELEASE batch")?,
                _ => tx.execute_batch("ROLLBACK TO batch; RELEASE batch")?,
            }
            r
        })();
        r.unwrap_or_else(|e| Err(StoreError::internal("writing a batch", e)))
    }

    /// Makes the schemas a committed transaction created visible.
    fn publish_schemas(&self, database: &Database, schemas: HashMap<String, TableSchema>) {
        for (t, sc) in schemas {
            let before = database.schema(&t);
            if before.as_ref().is_none_or(|cur| **cur != sc) && !sc.columns.is_empty() {
                database.set_schema(&t, sc);
                // A new table or new columns: the `table` policy says both.
                self.tables_changed.notify_one();
            }
        }
    }

    /// One batch inside the group's transaction. The outer error aborts the
    /// savepoint machinery itself; the inner one refuses just this batch.
    #[allow(clippy::too_many_arguments)]
    fn write_one(
        &self,
        tx: &Transaction<'_>,
        job: &Job,
        mut rows: Rows,
        planned: &TableSchema,
        planned_cols: NewColumns,
        schema: &TableSchema,
        now: &str,
    ) -> Result<Result<Stored, StoreError>, rusqlite::Error> {
        let table = &job.table;
        let n = rows.rows.len();
        if let Some(held) = self.already_held(tx, job, n, now)? {
            return Ok(Ok(held));
        }
        // Another batch may have changed the table since this one was
        // planned: plan again (coerced values coerce again unchanged).
        let new_cols = if schema == planned {
            planned_cols
        } else {
            match schema.plan_hinted(&mut rows, job.replica_hints()) {
                Ok(c) => c,
                Err(e) => return Ok(Err(e)),
            }
        };
        if schema.columns.is_empty()
            && let Some(kind) = taken(tx, table)?
        {
            return Ok(Err(name_taken(table, &kind)));
        }
        if !new_cols.is_empty() {
            tx.execute_batch(&alter_sql(table, schema, &new_cols))?;
            record_declared(tx, table, &new_cols, &rows)?;
        }
        // A large batch written here is recorded as several parts (one
        // transaction still), each small enough to travel to the other
        // members in one message. The cuts depend only on the rows, so the
        // same batch written on two members is cut alike.
        let starts = match &job.origin {
            Some(_) => vec![0],
            None => part_starts(&rows.rows, PART_BYTES),
        };
        let origin = self.assign_origin(job, starts.len());
        let before: i64 = tx
            .prepare_cached(&format!("SELECT coalesce(max(row_id), 0) FROM \"{table}\""))?
            .query_row([], |r| r.get(0))?;
        insert_rows(tx, table, &rows, &starts, &origin, now)?;
        // The batch's rows are one run of row ids (one writer, new ids are
        // max + 1): replication reads them back by that range.
        if tx.last_insert_rowid() != before + n as i64 {
            return Ok(Err(StoreError::internal(
                "writing a batch",
                "its row ids are not one run",
            )));
        }
        let mut records = Vec::with_capacity(starts.len());
        for (k, start) in starts.iter().enumerate() {
            let end = starts.get(k + 1).copied().unwrap_or(n);
            let mut rec = record(
                job,
                origin.clone(),
                Some(before + 1 + *start as i64),
                n,
                now,
            );
            rec.origin.id = origin.id + k as i64;
            rec.rows = (end - start) as i64;
            if k > 0 {
                rec.hash = format!("{}#{k}", job.meta.hash);
            }
            insert_batch(tx, &rec)?;
            records.push(rec);
        }
        Ok(Ok(Stored {
            written: Written {
                tsd_id: origin.id,
                origin: origin.peer.clone(),
                rows: n,
                duplicate: false,
            },
            new_columns: new_cols,
            records,
        }))
    }

    /// A batch this database already holds, by origin or by hash: what the
    /// write answers, and for a replicated copy of rows held under another
    /// origin its record (so that inventories agree). `None`: store it.
    fn already_held(
        &self,
        tx: &Transaction<'_>,
        job: &Job,
        n: usize,
        now: &str,
    ) -> rusqlite::Result<Option<Stored>> {
        if let Some(o) = &job.origin {
            let held = tx
                .prepare_cached("SELECT 1 FROM tarn_batches WHERE origin = ?1 AND origin_id = ?2")?
                .exists(params![o.peer, o.id])?;
            if held {
                return Ok(Some(Stored::duplicate(&o.peer, o.id, Vec::new())));
            }
        }
        let existing: Option<(String, i64)> = tx
            .prepare_cached(
                "SELECT origin, origin_id FROM tarn_batches \
                 WHERE table_name = ?1 AND hash = ?2 AND first_row IS NOT NULL",
            )?
            .query_row(params![job.table, job.meta.hash], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        let Some((peer, id)) = existing else {
            return Ok(None);
        };
        // A replicated batch whose rows are already here under another
        // origin (a client re-sent it to another member): remember that it
        // is held, and store nothing.
        let rec = match &job.origin {
            Some(o) => {
                let rec = record(job, o.clone(), None, n, now);
                insert_batch(tx, &rec)?;
                vec![rec]
            }
            None => Vec::new(),
        };
        Ok(Some(Stored::duplicate(&peer, id, rec)))
    }

    /// The identity of a batch about to be stored: its own for a replica,
    /// the next ids of this node (one per part) otherwise.
    fn assign_origin(&self, job: &Job, parts: usize) -> Origin {
        match &job.origin {
            Some(o) => {
                if o.peer == self.origin {
                    self.next_tsd.fetch_max(o.id + 1, Ordering::SeqCst);
                }
                o.clone()
            }
            None => Origin {
                peer: self.origin.clone(),
                name: self.tsd_name.clone(),
                id: self.next_tsd.fetch_add(parts as i64, Ordering::SeqCst),
            },
        }
    }
}

/// What already has the name `table` in the database (an index, say, of a
/// table from before tarn named its indexes apart), if anything.
pub(super) fn taken(conn: &Connection, table: &str) -> rusqlite::Result<Option<String>> {
    conn.prepare_cached("SELECT type FROM sqlite_master WHERE name = ?1 COLLATE NOCASE")?
        .query_row([table], |r| r.get(0))
        .optional()
}

pub(super) fn name_taken(table: &str, kind: &str) -> StoreError {
    StoreError::InvalidName(format!(
        "the name {table:?} is taken by an {kind} in this database; choose another table name"
    ))
}

/// A batch's record as `tarn_batches` keeps it.
fn record(
    job: &Job,
    origin: Origin,
    first_row: Option<i64>,
    rows: usize,
    now: &str,
) -> BatchRecord {
    BatchRecord {
        origin,
        table: job.table.clone(),
        source: job.meta.source.clone(),
        hash: job.meta.hash.clone(),
        instructions: job.meta.instructions.clone(),
        rows: rows as i64,
        time: now.to_owned(),
        from: job.from.clone(),
        stored: first_row.is_some(),
        first_row,
    }
}

/// The rows, in multi-row INSERTs (one statement step per chunk, not per
/// row), each with the id of the part it belongs to.
fn insert_rows(
    tx: &Transaction<'_>,
    table: &str,
    rows: &Rows,
    starts: &[usize],
    origin: &Origin,
    now: &str,
) -> rusqlite::Result<()> {
    let w = rows.columns.len();
    let chunk = (MAX_PARAMS / (w + 3)).clamp(1, ROWS_PER_INSERT);
    let mut index = 0;
    let mut part = 0;
    for rows_chunk in rows.rows.chunks(chunk) {
        let mut stmt = tx.prepare_cached(&insert_sql(table, &rows.columns, rows_chunk.len()))?;
        let mut at = 1;
        for row in rows_chunk {
            while starts.get(part + 1).is_some_and(|s| *s <= index) {
                part += 1;
            }
            index += 1;
            stmt.raw_bind_parameter(at, now)?;
            stmt.raw_bind_parameter(at + 1, &origin.name)?;
            stmt.raw_bind_parameter(at + 2, origin.id + part as i64)?;
            at += 3;
            for v in row {
                stmt.raw_bind_parameter(at, v)?;
                at += 1;
            }
        }
        stmt.raw_execute()?;
    }
    Ok(())
}
