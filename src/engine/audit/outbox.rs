//! The audit outbox (over NATS): where a check's record is kept from
//! before its answer until the audit stream has stored it.
//!
//! A record is appended to `audit-outbox` in the instance's data directory
//! before the check is answered: a copy into the file's shared memory map,
//! no fsync. The map's pages are the kernel's page cache, so the record
//! survives the engine's process dying, as the server's own unsynced
//! writes do (a `write` per check, the same promise, cost the reply several
//! microseconds more). The file is made [`CAPACITY`] long: its records, one
//! JSON object a line, then zeros to its end; it grows when they do not
//! fit. A record's bytes go in before its line end, so after a crash every
//! line that ends is whole, and the records end at the last line end
//! before the first zero. One task
//! ships what the file holds to the audit stream in batches: every few
//! milliseconds, the records gathered since, one stream message per
//! mandate's subject (its records one JSON object a line), each with a
//! message id. A batch is sent again, with the same ids, until the stream
//! acknowledges all of it; only then does the shipped mark move. So a
//! record is never dropped: not when the stream refuses it, is missing, or
//! the server is down (the record waits and `health` counts it as
//! pending), and not when the engine dies (the next start on the same
//! directory ships what is left).
//!
//! `audit-outbox.mark` holds the outbox's id, its segment, how far it is
//! shipped and the batch in flight: a batch cut short by a crash is sent
//! again over the same range with the same message ids, so the stream's
//! duplicate window drops what it already has. A fully shipped file is
//! emptied, and the segment moves on so message ids are never reused.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use tokio::sync::Notify;

use crate::engine::EngineError;

/// The outbox file's length when it is made or emptied (records, then
/// zeros): what the map holds before it must grow.
const CAPACITY: u64 = 4 * 1024 * 1024;
/// Records gathered after the first one before a batch is cut.
const GATHER: Duration = Duration::from_millis(5);
/// Largest batch read from the file at once.
const MAX_BATCH: u64 = 256 * 1024;
/// A fully shipped file at least this long is emptied.
const EMPTY_AT: u64 = 1024 * 1024;
/// Pauses between attempts at a batch the stream did not take.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// How long a stopping instance goes on shipping.
const LAST_SHIPPING: Duration = Duration::from_secs(2);

/// The outbox's file in the instance's data directory.
pub const FILE: &str = "audit-outbox";
const MARK: &str = "audit-outbox.mark";

/// The appending half, shared by every check of the instance.
pub(crate) struct Outbox {
    shared: Arc<Shared>,
    /// Ends the shipping task (after a last attempt) when dropped.
    _stop: tokio::sync::oneshot::Sender<()>,
}

struct Shared {
    writer: Mutex<Writer>,
    wake: Notify,
    /// Records appended and not yet stored by the stream.
    pending: AtomicU64,
    /// Attempts at a batch that failed.
    failures: Arc<AtomicU64>,
}

struct Writer {
    file: File,
    /// The whole file, shared with the page cache.
    map: memmap2::MmapMut,
    /// Where the records end (the zeros begin).
    len: u64,
}

impl Writer {
    /// Maps `file`, whose records end at `len` and whose bytes after them
    /// are zeros.
    fn map(file: File, len: u64) -> Result<Self, EngineError> {
        let mut map = map_whole(&file)?;
        // Its pages in now, at start, not one by one on the reply path: a
        // page first written faults in (several microseconds, a block to
        // allocate).
        let warm = (CAPACITY as usize).clamp(len as usize, map.len());
        map[len as usize..warm].fill(0);
        Ok(Self { file, map, len })
    }

    /// Appends `line` (ending in its line end), growing the file if need
    /// be. The line end goes in last: a crash part way leaves a line
    /// without one, which recovery cuts off.
    fn append(&mut self, line: &[u8]) -> Result<(), EngineError> {
        let end = self.len + line.len() as u64;
        if end > self.map.len() as u64 {
            self.grow(end)?;
        }
        let (at, body) = (self.len as usize, &line[..line.len() - 1]);
        self.map[at..at + body.len()].copy_from_slice(body);
        std::sync::atomic::fence(Ordering::SeqCst);
        self.map[at + body.len()] = b'\n';
        self.len = end;
        Ok(())
    }

    /// Makes the file at least `need` long (twice as long at least), and
    /// maps it whole again.
    fn grow(&mut self, need: u64) -> Result<(), EngineError> {
        let len = need.max(2 * self.map.len() as u64);
        self.file
            .set_len(len)
            .map_err(|e| io("make the file longer", e))?;
        self.map = map_whole(&self.file)?;
        Ok(())
    }

    /// Empties the file so that a crash finds it either whole or empty:
    /// its first byte is made zero first, then the rest of its records.
    /// The pages stay, so the next records do not fault new ones in. A file
    /// that grew past [`CAPACITY`] is cut back to it.
    fn empty(&mut self) -> Result<(), EngineError> {
        if self.map.len() as u64 > CAPACITY {
            // The map must not outlive the bytes it covers: a page of
            // memory stands in for it until the file is mapped again. If
            // the file cannot be mapped again, the next append grows it
            // from there, as it grows a full one.
            self.map = memmap2::MmapMut::map_anon(1).map_err(|e| io("unmap the file", e))?;
            self.file
                .set_len(0)
                .map_err(|e| io("empty the shipped file", e))?;
            self.len = 0;
            match self
                .file
                .set_len(CAPACITY)
                .map_err(|e| io("make the emptied file its length", e))
                .and_then(|()| map_whole(&self.file))
            {
                Ok(map) => self.map = map,
                Err(e) => {
                    tracing::warn!(error = %e, "audit outbox: emptied; the next record grows the file")
                }
            }
            return Ok(());
        }
        let len = std::mem::take(&mut self.len) as usize;
        if len > 0 {
            self.map[0] = 0;
            std::sync::atomic::fence(Ordering::SeqCst);
            self.map[1..len].fill(0);
        }
        Ok(())
    }
}

/// The whole of `file`, mapped shared.
fn map_whole(file: &File) -> Result<memmap2::MmapMut, EngineError> {
    // SAFETY: the file is this instance's alone (its data directory is
    // locked by the open store), and is only made shorter at open, before
    // it is mapped, or under the writer's lock with its map dropped first
    // (`Writer::empty`).
    unsafe { memmap2::MmapMut::map_mut(file) }.map_err(|e| io("map the file", e))
}

/// The shipping task's place in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Mark {
    id: u128,
    segment: u64,
    /// Everything before this offset is stored.
    shipped: u64,
    /// End of the batch in flight (`== shipped`: none).
    end: u64,
}

impl Mark {
    const LEN: usize = 2 + 1 + 32 + 3 * 21 + 1;

    fn encode(&self) -> String {
        format!(
            "v1 {:032x} {:020} {:020} {:020}\n",
            self.id, self.segment, self.shipped, self.end
        )
    }

    fn decode(s: &str) -> Option<Self> {
        let mut parts = s.split_whitespace();
        if parts.next()? != "v1" {
            return None;
        }
        let id = u128::from_str_radix(parts.next()?, 16).ok()?;
        let mut n = || parts.next()?.parse::<u64>().ok();
        let (segment, shipped, end) = (n()?, n()?, n()?);
        (shipped <= end).then_some(Self {
            id,
            segment,
            shipped,
            end,
        })
    }
}

fn io(what: &str, e: std::io::Error) -> EngineError {
    EngineError::unavailable(format!("audit outbox: cannot {what}: {e}"))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Outbox {
    /// Opens the outbox in `dir` (what an earlier run left is shipped
    /// first) and starts shipping it through `client`.
    pub(crate) fn open(
        dir: &Path,
        client: &async_nats::Client,
        failures: Arc<AtomicU64>,
    ) -> Result<Self, EngineError> {
        let (writer, reader, mark_file, mark, pending) = recover(dir)?;
        let shared = Arc::new(Shared {
            writer: Mutex::new(writer),
            wake: Notify::new(),
            pending: AtomicU64::new(pending),
            failures,
        });
        if pending > 0 {
            tracing::info!(
                records = pending,
                "audit outbox: shipping records an earlier run left"
            );
            shared.wake.notify_one();
        }
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let shipper = Shipper {
            shared: shared.clone(),
            js: jetstream::new(client.clone()),
            reader,
            mark_file,
            mark,
        };
        tokio::spawn(shipper.run(stopped));
        Ok(Self {
            shared,
            _stop: stop,
        })
    }

    /// Appends one record for `subject`; returns once it is in the file.
    pub(crate) fn append<R: serde::Serialize>(
        &self,
        subject: &str,
        record: &R,
    ) -> Result<(), EngineError> {
        let mut line = Vec::with_capacity(subject.len() + 1024);
        line.extend_from_slice(subject.as_bytes());
        line.push(b' ');
        // A record is plain data: encoding it cannot fail.
        serde_json::to_writer(&mut line, record).expect("audit records serialize");
        line.push(b'\n');
        lock(&self.shared.writer).append(&line)?;
        self.shared.pending.fetch_add(1, Ordering::Relaxed);
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Records answered and not yet stored by the audit stream.
    pub(crate) fn pending(&self) -> u64 {
        self.shared.pending.load(Ordering::Relaxed)
    }
}

/// Opens the file and its mark as a crash may have left them: a mark past
/// the records' end (emptied before the mark moved) starts a new segment; a
/// torn last line is cut off, and everything after the records made zeros.
/// Returns the count of records not shipped. A file an older version wrote
/// (its records alone, no zeros after them) reads the same.
fn recover(dir: &Path) -> Result<(Writer, File, File, Mark, u64), EngineError> {
    let path = dir.join(FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| io(&format!("open {}", path.display()), e))?;
    let reader = File::open(&path).map_err(|e| io("open the outbox to read", e))?;
    let mark_path = dir.join(MARK);
    let mark_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&mark_path)
        .map_err(|e| io(&format!("open {}", mark_path.display()), e))?;
    let mut buf = vec![0u8; Mark::LEN];
    let read = mark_file.read_at(&mut buf, 0).unwrap_or(0);
    let size = file.metadata().map_err(|e| io("read its length", e))?.len();
    // The records end at the last line end before the first zero.
    let (mut zeros, mut len) = (size, 0);
    scan(&reader, 0, size, |at, chunk| {
        let upto = chunk.iter().position(|b| *b == 0);
        let records = &chunk[..upto.unwrap_or(chunk.len())];
        if let Some(i) = records.iter().rposition(|b| *b == b'\n') {
            len = at + i as u64 + 1;
        }
        match upto {
            Some(i) => {
                zeros = at + i as u64;
                false
            }
            None => true,
        }
    })?;
    let mut mark = match Mark::decode(&String::from_utf8_lossy(&buf[..read])) {
        Some(m) => m,
        None => {
            if len > 0 {
                tracing::warn!("audit outbox: no readable mark; the whole file is shipped again (the stream may hold some records twice)");
            }
            Mark {
                id: uuid::Uuid::new_v4().as_u128(),
                segment: 0,
                shipped: 0,
                end: 0,
            }
        }
    };
    if mark.shipped > len || mark.end > len {
        // Emptied before the mark moved on (or the file was cut short).
        mark = Mark {
            segment: mark.segment + 1,
            shipped: 0,
            end: 0,
            ..mark
        };
    }
    if zeros > len {
        tracing::warn!(
            bytes = zeros - len,
            "audit outbox: a torn last record (cut off by a crash before its answer) is dropped"
        );
    }
    // Zeros after the records, whatever a crash left there.
    file.set_len(len)
        .and_then(|()| file.set_len(size.max(CAPACITY)))
        .map_err(|e| io("cut the file after its records", e))?;
    if mark.end > len {
        mark.end = mark.shipped;
    }
    write_mark(&mark_file, &mark)?;
    let mut pending = 0;
    scan(&reader, mark.shipped, len, |_, chunk| {
        pending += chunk.iter().filter(|b| **b == b'\n').count() as u64;
        true
    })?;
    Ok((Writer::map(file, len)?, reader, mark_file, mark, pending))
}

/// Reads `file` from `from` to `to` a chunk at a time, handing each to
/// `each` with its offset, until `each` says to stop.
fn scan(
    file: &File,
    from: u64,
    to: u64,
    mut each: impl FnMut(u64, &[u8]) -> bool,
) -> Result<(), EngineError> {
    let mut buf = vec![0u8; (to.saturating_sub(from)).min(MAX_BATCH) as usize];
    let mut at = from;
    while at < to {
        let n = (to - at).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], at)
            .map_err(|e| io("read the file", e))?;
        if !each(at, &buf[..n]) {
            break;
        }
        at += n as u64;
    }
    Ok(())
}

fn write_mark(file: &File, mark: &Mark) -> Result<(), EngineError> {
    file.write_all_at(mark.encode().as_bytes(), 0)
        .map_err(|e| io("write its mark", e))
}

struct Shipper {
    shared: Arc<Shared>,
    js: jetstream::Context,
    reader: File,
    mark_file: File,
    mark: Mark,
}

impl Shipper {
    async fn run(mut self, mut stop: tokio::sync::oneshot::Receiver<()>) {
        loop {
            let stopping = tokio::select! {
                _ = self.shared.wake.notified() => false,
                _ = &mut stop => true,
            };
            if stopping {
                let _ = tokio::time::timeout(LAST_SHIPPING, self.catch_up(None)).await;
                let left = self.shared.pending.load(Ordering::Relaxed);
                if left > 0 {
                    tracing::warn!(records = left, "audit outbox: records not shipped at stop stay in the outbox for the next start");
                }
                return;
            }
            tokio::time::sleep(GATHER).await;
            if !self.catch_up(Some(&mut stop)).await {
                // Stopped while retrying: one last go.
                let _ = tokio::time::timeout(LAST_SHIPPING, self.catch_up(None)).await;
                return;
            }
        }
    }

    /// Ships until the file is shipped to its end, retrying a batch the
    /// stream does not take. False if `stop` fired meanwhile.
    async fn catch_up(
        &mut self,
        mut stop: Option<&mut tokio::sync::oneshot::Receiver<()>>,
    ) -> bool {
        let mut pause = RETRY_MIN;
        loop {
            match self.ship_one().await {
                Ok(true) => pause = RETRY_MIN,
                Ok(false) => return true,
                Err(e) => {
                    self.shared.failures.fetch_add(1, Ordering::Relaxed);
                    let pending = self.shared.pending.load(Ordering::Relaxed);
                    tracing::error!(error = %e, pending, "AUDIT RECORDS NOT STORED YET: the audit stream did not take a batch; they stay in the outbox and are sent again");
                    match stop.as_deref_mut() {
                        Some(stop) => {
                            tokio::select! {
                                _ = tokio::time::sleep(pause) => {}
                                _ = stop => return false,
                            }
                        }
                        None => tokio::time::sleep(pause).await,
                    }
                    pause = (pause * 2).min(RETRY_MAX);
                }
            }
        }
    }

    /// Ships one batch: false if there was none.
    async fn ship_one(&mut self) -> Result<bool, EngineError> {
        if self.mark.end == self.mark.shipped {
            let len = lock(&self.shared.writer).len;
            if self.mark.shipped == len {
                self.empty_if_long()?;
                return Ok(false);
            }
            let take = (len - self.mark.shipped).min(MAX_BATCH);
            let bytes = self.read(self.mark.shipped, take)?;
            // Whole lines only; at least one, however long.
            let cut = match bytes.iter().rposition(|b| *b == b'\n') {
                Some(i) => i as u64 + 1,
                None => self.line_end(self.mark.shipped, len)?,
            };
            self.mark.end = self.mark.shipped + cut;
            write_mark(&self.mark_file, &self.mark)?;
        }
        let bytes = self.read(self.mark.shipped, self.mark.end - self.mark.shipped)?;
        let records = self.send(&bytes).await?;
        self.mark.shipped = self.mark.end;
        write_mark(&self.mark_file, &self.mark)?;
        self.shared.pending.fetch_sub(records, Ordering::Relaxed);
        Ok(true)
    }

    fn read(&self, at: u64, len: u64) -> Result<Vec<u8>, EngineError> {
        let mut buf = vec![0u8; len as usize];
        self.reader
            .read_exact_at(&mut buf, at)
            .map_err(|e| io("read records", e))?;
        Ok(buf)
    }

    /// The end of the line starting at `at` (a record longer than a batch).
    fn line_end(&self, at: u64, len: u64) -> Result<u64, EngineError> {
        let bytes = self.read(at, len - at)?;
        let i = bytes.iter().position(|b| *b == b'\n').ok_or_else(|| {
            EngineError::message(
                crate::engine::EngineErrorKind::Internal,
                "audit outbox: a record without its line end",
            )
        })?;
        Ok(i as u64 + 1)
    }

    /// Sends a batch, one message per subject, and waits for every
    /// acknowledgement; returns how many records it held.
    async fn send(&self, batch: &[u8]) -> Result<u64, EngineError> {
        let mut groups: Vec<(&str, Vec<u8>)> = Vec::new();
        let mut records = 0;
        for line in batch.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            records += 1;
            let Some(space) = line.iter().position(|b| *b == b' ') else {
                tracing::error!("audit outbox: a line without its subject is skipped");
                continue;
            };
            let (subject, record) = (&line[..space], &line[space + 1..]);
            let subject = std::str::from_utf8(subject).unwrap_or_default();
            match groups.iter_mut().find(|(s, _)| *s == subject) {
                Some((_, body)) => {
                    body.push(b'\n');
                    body.extend_from_slice(record);
                }
                None => groups.push((subject, record.to_vec())),
            }
        }
        let mut acks = Vec::with_capacity(groups.len());
        for (k, (subject, body)) in groups.into_iter().enumerate() {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(
                "Nats-Msg-Id",
                format!(
                    "audit-{:032x}-{}-{}-{k}",
                    self.mark.id, self.mark.segment, self.mark.shipped
                )
                .as_str(),
            );
            let ack = self
                .js
                .publish_with_headers(subject.to_string(), headers, body.into())
                .await
                .map_err(|e| {
                    EngineError::unavailable(format!("cannot send to the audit stream: {e}"))
                })?;
            acks.push(ack);
        }
        for ack in acks {
            ack.await.map_err(|e| {
                EngineError::unavailable(format!("the audit stream did not store a batch: {e}"))
            })?;
        }
        Ok(records)
    }

    /// Empties a fully shipped file once it is long, starting a segment.
    fn empty_if_long(&mut self) -> Result<(), EngineError> {
        if self.mark.shipped < EMPTY_AT {
            return Ok(());
        }
        let mut w = lock(&self.shared.writer);
        if w.len != self.mark.shipped {
            return Ok(());
        }
        w.empty()?;
        self.mark = Mark {
            segment: self.mark.segment + 1,
            shipped: 0,
            end: 0,
            ..self.mark
        };
        write_mark(&self.mark_file, &self.mark)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_reads_back_as_written_at_its_fixed_length() {
        let m = Mark {
            id: u128::MAX - 7,
            segment: 3,
            shipped: 10,
            end: 99,
        };
        assert_eq!(m.encode().len(), Mark::LEN);
        assert_eq!(Mark::decode(&m.encode()), Some(m));
        assert_eq!(Mark::decode("v2 00 1 2 3"), None);
        assert_eq!(Mark::decode(""), None);
        // A batch cannot end before what is shipped.
        let backwards = Mark { shipped: 100, ..m };
        assert_eq!(Mark::decode(&backwards.encode()), None);
    }

    #[test]
    fn recovery_cuts_a_torn_record_and_counts_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(FILE),
            b"s.a {\"x\":1}\ns.b {\"x\":2}\ns.c {\"x",
        )
        .unwrap();
        let (w, _, _, mark, pending) = recover(dir.path()).unwrap();
        assert_eq!(pending, 2);
        assert_eq!(w.len, 24);
        assert_eq!((mark.shipped, mark.end), (0, 0));
        // The file is made its capacity long: the records, then zeros.
        let file = std::fs::read(dir.path().join(FILE)).unwrap();
        assert_eq!(file.len() as u64, CAPACITY);
        assert_eq!(&file[..24], b"s.a {\"x\":1}\ns.b {\"x\":2}\n");
        assert!(file[24..].iter().all(|b| *b == 0));
    }

    /// The file as `recover` leaves it: its records, then zeros.
    fn records_then_zeros(dir: &Path) -> (Vec<u8>, bool) {
        let file = std::fs::read(dir.join(FILE)).unwrap();
        let end = file.iter().position(|b| *b == 0).unwrap_or(file.len());
        let zeros = file[end..].iter().all(|b| *b == 0);
        (file[..end].to_vec(), zeros)
    }

    /// A crash part way through a record's copy leaves some of its bytes
    /// and not others, never its line end (written last): the bytes it
    /// left, holes and all, are cut off and made zeros.
    #[test]
    fn a_record_cut_off_part_way_through_its_copy_is_dropped_holes_and_all() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = b"s.a {\"x\":1}\ns.b {\"x\":".to_vec();
        file.extend_from_slice(&[0; 5]);
        file.extend_from_slice(b"22222}");
        file.resize(4096, 0);
        std::fs::write(dir.path().join(FILE), &file).unwrap();
        let (w, _, _, _, pending) = recover(dir.path()).unwrap();
        assert_eq!((w.len, pending), (12, 1));
        drop(w);
        assert_eq!(
            records_then_zeros(dir.path()),
            (b"s.a {\"x\":1}\n".to_vec(), true)
        );
    }

    /// Appends go into the map, the page cache: a reader of the file (the
    /// shipper, or the next start after the process died) has them at once.
    #[test]
    fn appended_records_are_in_the_file_for_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, reader, _, _, _) = recover(dir.path()).unwrap();
        w.append(b"s.a {\"x\":1}\n").unwrap();
        w.append(b"s.b {\"x\":2}\n").unwrap();
        let mut seen = vec![0u8; 24];
        reader.read_exact_at(&mut seen, 0).unwrap();
        assert_eq!(&seen, b"s.a {\"x\":1}\ns.b {\"x\":2}\n");
        // Dropped without any flush, as a killed process leaves it.
        std::mem::forget(w);
        let (w, _, _, mark, pending) = recover(dir.path()).unwrap();
        assert_eq!((w.len, pending, mark.shipped), (24, 2, 0));
    }

    /// A record longer than the file grows it; the next start reads it.
    #[test]
    fn a_record_longer_than_the_file_grows_it() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, _, _, _, _) = recover(dir.path()).unwrap();
        let mut long = b"s.a ".to_vec();
        long.resize(CAPACITY as usize + 100, b'x');
        long.push(b'\n');
        w.append(b"s.b {}\n").unwrap();
        w.append(&long).unwrap();
        assert!(w.map.len() >= 7 + long.len());
        drop(w);
        let (mut w, _, _, _, pending) = recover(dir.path()).unwrap();
        assert_eq!((w.len, pending), (7 + long.len() as u64, 2));
        // Emptied, a grown file is cut back to its first length, and takes
        // records again.
        w.empty().unwrap();
        assert_eq!((w.len, w.map.len() as u64), (0, CAPACITY));
        w.append(b"s.c {}\n").unwrap();
        drop(w);
        let file = std::fs::read(dir.path().join(FILE)).unwrap();
        assert_eq!(file.len() as u64, CAPACITY);
        assert_eq!(records_then_zeros(dir.path()), (b"s.c {}\n".to_vec(), true));
    }

    /// Emptying makes the first byte zero before the rest: a crash in
    /// between, or after, finds an empty file and starts a new segment (its
    /// records are shipped already: the mark says so), never a record
    /// twice.
    #[test]
    fn an_emptied_file_is_empty_at_the_next_start_even_when_emptying_was_cut_short() {
        for cut_short in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let (mut w, _, mark_file, mark, _) = recover(dir.path()).unwrap();
            w.append(b"s.a {\"x\":1}\n").unwrap();
            w.append(b"s.b {\"x\":2}\n").unwrap();
            let shipped = Mark {
                shipped: 24,
                end: 24,
                ..mark
            };
            write_mark(&mark_file, &shipped).unwrap();
            if cut_short {
                // Only the first byte made zero when the process died.
                w.map[0] = 0;
            } else {
                w.empty().unwrap();
                assert_eq!(w.len, 0);
            }
            std::mem::forget(w);
            let (w, _, _, mark, pending) = recover(dir.path()).unwrap();
            assert_eq!((w.len, pending), (0, 0), "cut short: {cut_short}");
            assert_eq!(
                mark,
                Mark {
                    segment: shipped.segment + 1,
                    shipped: 0,
                    end: 0,
                    ..shipped
                }
            );
            drop(w);
            assert_eq!(records_then_zeros(dir.path()), (Vec::new(), true));
        }
    }

    #[test]
    fn a_mark_past_the_files_end_starts_a_new_segment() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), b"").unwrap();
        let old = Mark {
            id: 5,
            segment: 2,
            shipped: 4096,
            end: 4096,
        };
        std::fs::write(dir.path().join(MARK), old.encode()).unwrap();
        let (_, _, _, mark, pending) = recover(dir.path()).unwrap();
        assert_eq!(pending, 0);
        assert_eq!(
            mark,
            Mark {
                id: 5,
                segment: 3,
                shipped: 0,
                end: 0
            }
        );
    }

    #[test]
    fn a_batch_in_flight_at_a_crash_is_kept_to_be_sent_again() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), b"s.a {}\ns.b {}\ns.c {}\n").unwrap();
        let inflight = Mark {
            id: 9,
            segment: 0,
            shipped: 7,
            end: 14,
        };
        std::fs::write(dir.path().join(MARK), inflight.encode()).unwrap();
        let (_, _, _, mark, pending) = recover(dir.path()).unwrap();
        assert_eq!(mark, inflight);
        assert_eq!(pending, 2);
    }
}
