//! The boundary to the provider: one trait, implemented over HTTP (`client`) and in memory
//! (`simulator`), one attempt per call; the errors a caller must be able to tell apart; and
//! how a listing is put together from its pages, for every provider alike.

use std::collections::HashSet;
use std::future::Future;
use std::time::Duration;

use futures_util::StreamExt;

use crate::model::{CreateSnapshot, RestoreStarted, Server, ServerId, Snapshot, SnapshotId};

/// The longest `Retry-After` honoured, whoever answers: an absurd value must not hold back
/// starting a server this program stopped (nor overflow a deadline).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// A listing that pages longer than this is a provider bug, not a fleet.
pub const MAX_PAGES: usize = 10_000;

/// A listing that holds more records than this is a provider bug, not a fleet (it would be
/// 200,000 servers at 5 snapshots each): a provider whose pages never end must not take all
/// the memory.
pub const MAX_RECORDS: usize = 1_000_000;

/// The most memory the records of one listing may take, text included: a fleet of 50,000
/// servers at the cap takes about a quarter of this. Long names or descriptions on pages that
/// never end must not grow the process to gigabytes before the record bound is reached.
pub const MAX_LISTING_BYTES: usize = 256 << 20;

/// The longest `next` link followed: a real one is a URL with a query; pages 2..=n of a long
/// listing are each built from it, so a huge one would be copied thousands of times.
pub const MAX_LINK_BYTES: usize = 8 << 10;

/// Records a listing may hold beyond its `count` (at least; a tenth more for a large one):
/// records shifted onto a second page while snapshots were created.
const RECORDS_MARGIN: usize = 100;

/// Pages of one listing asked for at once when their numbers are known (DRF's `?page=N`): a
/// fleet's listing is hundreds of pages, and one after another they cost hundreds of round trips.
const PAGES_IN_FLIGHT: usize = 8;

/// Records that could not be read, named one by one in a warning; the rest are counted.
const UNREADABLE_NAMED: usize = 5;

/// Everything the scheduler asks of a provider, one attempt per call: retrying is
/// [`crate::retry::Retrying`]'s job, for every provider alike. Futures are `Send` so the
/// daemon can spawn them.
pub trait Provider: Send + Sync + 'static {
    /// One page of the listing for `scope`: the first (`link` is `None`) or the one a
    /// previous page's `next` points to.
    fn list_page(
        &self,
        scope: Scope<'_>,
        link: Option<&str>,
    ) -> impl Future<Output = Result<ListedPage, ApiError>> + Send;

    /// All snapshots of one server, or of every server when `server` is `None`, put together
    /// from every page ([`list_pages`]).
    fn list_snapshots(
        &self,
        server: Option<ServerId>,
    ) -> impl Future<Output = Result<Vec<Snapshot>, ApiError>> + Send {
        list_pages(self, server.map_or(Scope::Account, Scope::Server))
    }

    /// The snapshots of these servers, from one account-wide listing (one paginated call,
    /// however many servers). A listed record that cannot be read is an error naming it when
    /// it belongs to one of these servers (left out, it could be the snapshot being waited for,
    /// or one that counts toward the cap); any other is left out with a warning, so one odd
    /// hand-made snapshot elsewhere in the account does not stop the work on these.
    fn list_snapshots_of(
        &self,
        servers: &[ServerId],
    ) -> impl Future<Output = Result<Vec<Snapshot>, ApiError>> + Send {
        async move {
            let mut wanted = servers.to_vec();
            wanted.sort_unstable();
            wanted.dedup();
            list_pages(self, Scope::Servers(&wanted)).await
        }
    }

    /// Creates a snapshot. Sent once: after a lost answer, only a look by name can tell
    /// whether it happened ([`crate::retry::Retrying`] looks for it and never sends it again).
    fn create_snapshot(
        &self,
        request: &CreateSnapshot,
    ) -> impl Future<Output = Result<Snapshot, ApiError>> + Send;

    fn delete_snapshot(&self, id: SnapshotId) -> impl Future<Output = Result<(), ApiError>> + Send;

    fn restore_snapshot(
        &self,
        id: SnapshotId,
    ) -> impl Future<Output = Result<RestoreStarted, ApiError>> + Send;

    fn get_server(&self, id: ServerId) -> impl Future<Output = Result<Server, ApiError>> + Send;

    fn stop_server(&self, id: ServerId) -> impl Future<Output = Result<Server, ApiError>> + Send;

    fn start_server(&self, id: ServerId) -> impl Future<Output = Result<Server, ApiError>> + Send;
}

/// Whose records a listing is for: a record of one of these servers that cannot be read is an
/// error; any other is left out with a warning.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    /// `?server_id=`: every record is taken to be this server's, unless it says otherwise.
    Server(ServerId),
    /// The account-wide listing, for these servers (sorted).
    Servers(&'a [ServerId]),
    /// The account-wide listing, for nobody in particular (`list`, `restore`).
    Account,
}

impl Scope<'_> {
    /// Whether a record of `server` (`None`: its server could not be read) is asked about.
    pub fn wants(self, server: Option<ServerId>) -> bool {
        match (self, server) {
            (Self::Server(id), Some(s)) => s == id,
            // The provider filtered by this server: a record that does not say whose it is
            // may well be its.
            (Self::Server(_), None) => true,
            (Self::Servers(wanted), Some(s)) => wanted.binary_search(&s).is_ok(),
            (Self::Servers(_), None) | (Self::Account, _) => false,
        }
    }

    /// The operation, as errors name it.
    pub fn what(self) -> String {
        match self {
            Self::Server(id) => format!("list snapshots of server {id}"),
            Self::Servers(_) | Self::Account => "list snapshots".to_owned(),
        }
    }
}

/// One page of a listing: the records that could be read, and those that could not.
#[derive(Debug, Default)]
pub struct ListedPage {
    pub count: Option<u64>,
    /// The provider's link to the next page.
    pub next: Option<String>,
    /// How many records the page had, readable or not (the page size).
    pub records: usize,
    pub snapshots: Vec<Snapshot>,
    pub unreadable: Vec<Unreadable>,
}

/// A listed record that did not fit, with what could be made out of it to tell whose it is.
#[derive(Debug)]
pub struct Unreadable {
    /// Its `id` as the provider wrote it (escaped), if it had one.
    pub id: Option<String>,
    pub server: Option<ServerId>,
    /// Which field and why, `results[3].created_at: ...` (escaped).
    pub error: String,
}

impl std::fmt::Display for Unreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.id, self.server) {
            (Some(id), Some(server)) => write!(f, "snapshot {id} of server {server}")?,
            (Some(id), None) => write!(f, "snapshot {id} (its server unreadable)")?,
            (None, Some(server)) => write!(f, "a snapshot without an id of server {server}")?,
            (None, None) => f.write_str("a record without an id or server")?,
        }
        write!(f, ", field {}", self.error)
    }
}

/// Every page of the listing for `scope` (see [`stream_pages`]), collected: the records of
/// the servers it is about, each snapshot once.
pub async fn list_pages<P: Provider + ?Sized>(
    provider: &P,
    scope: Scope<'_>,
) -> Result<Vec<Snapshot>, ApiError> {
    let mut all = Vec::new();
    let mut seen = HashSet::new();
    stream_pages(provider, scope, |s| {
        if seen.insert(s.id) {
            all.push(s);
        }
    })
    .await?;
    Ok(all)
}

/// Every page of the listing for `scope`, each page asked for with `provider.list_page` (so
/// a page that fails is retried alone when the provider retries), each readable record of a
/// server it is about handed to `sink` as its page arrives, in page order; an error naming a
/// record of one of them that could not be read. Records of other servers are dropped as
/// their page arrives, so a poll of a few servers never holds the account's listing. After
/// the first page, a DRF page-number list (`next` ends in `page=2`, `count` given) has its
/// other pages asked for `PAGES_IN_FLIGHT` at a time; any other shape is followed link by link.
///
/// Pages shift while snapshots are created and deleted. A snapshot created meanwhile can show
/// one record on two pages: the sink must keep it once (counted twice, a kept snapshot would
/// look like one too many and be pruned). A snapshot deleted meanwhile moves a record onto a
/// page already read, where it is never seen: a server's own snapshot missed is created a
/// second time. So a listing read while it changed (a later page's `count` differs from the
/// first's, or a numbered page is gone) is an error ([`ApiError::Changed`]), never a shorter
/// list; the callers list each server on its own instead, and drop what the sink was given.
/// A `next` link already followed, or more records than `count` promised, is an error too: a
/// provider that loops or lies must not grow the process without bound. Returns how many
/// pages it read.
pub async fn stream_pages<P: Provider + ?Sized>(
    provider: &P,
    scope: Scope<'_>,
    mut sink: impl FnMut(Snapshot),
) -> Result<usize, ApiError> {
    let what = scope.what();
    let first = provider.list_page(scope, None).await?;
    check_link(&what, first.next.as_deref())?;
    let mut read = PagesRead::new(&what, &first);
    let mut kept = Kept::new(scope);
    let mut next = first.next.clone();
    let numbered = next
        .as_deref()
        .and_then(|n| numbered_pages(n, first.count, first.records));
    kept.page(first, &mut sink);
    if let Some(links) = numbered {
        read.followed.extend(links.iter().map(|l| link_hash(l)));
        let mut pages = futures_util::stream::iter(links.into_iter().enumerate())
            .map(|(i, link)| async move { (i + 2, provider.list_page(scope, Some(&link)).await) })
            .buffered(PAGES_IN_FLIGHT);
        let mut last_next = None;
        while let Some((number, page)) = pages.next().await {
            let page = match page {
                Ok(page) => page,
                // A page that no longer exists: the list shrank meanwhile, and what was on
                // it moved onto pages already read.
                Err(ApiError::NotFound { .. }) => {
                    return Err(read.changed(format!(
                        "page {number} no longer exists, though page 1 said {} at {} a page",
                        count_text(read.count),
                        read.per_page
                    )));
                }
                Err(e) => return Err(e),
            };
            read.page(number, &page)?;
            check_link(&what, page.next.as_deref())?;
            // Only the very last page's `next` can lead further.
            last_next = page.next.clone();
            kept.page(page, &mut sink);
        }
        next = last_next;
    }
    while let Some(link) = next {
        if read.pages >= MAX_PAGES {
            return Err(ApiError::Decode {
                what,
                message: format!("more than {MAX_PAGES} pages; the `next` links seem to loop"),
            });
        }
        let number = read.pages + 1;
        check_link(&what, Some(&link))?;
        read.follow(&link, number)?;
        let page = match provider.list_page(scope, Some(&link)).await {
            Ok(page) => page,
            Err(ApiError::NotFound { .. }) => {
                return Err(read.changed(format!("page {number} no longer exists")));
            }
            Err(e) => return Err(e),
        };
        read.page(number, &page)?;
        next = page.next.clone();
        kept.page(page, &mut sink);
    }
    check_unreadable(&kept.unreadable, scope, &what)?;
    if let (Scope::Server(id), n @ 1..) = (scope, kept.others) {
        // A listing asked for one server answers for that server only: a record of
        // another one (a filter the provider ignored, a `next` link without it) is
        // not this server's to count, keep or delete.
        tracing::warn!(
            "{what}: left out {n} record(s) of other servers (the answer was not filtered by server_id={id})"
        );
    }
    Ok(read.pages)
}

/// What a listing keeps of each page: the records of the servers it is about go to the sink
/// at once; unreadable records are kept (a few, judged at the end); the others are counted.
struct Kept<'a> {
    scope: Scope<'a>,
    unreadable: Vec<Unreadable>,
    /// Records of servers a one-server listing was not about.
    others: usize,
}

impl<'a> Kept<'a> {
    fn new(scope: Scope<'a>) -> Self {
        Self {
            scope,
            unreadable: Vec::new(),
            others: 0,
        }
    }

    fn page(&mut self, page: ListedPage, sink: &mut impl FnMut(Snapshot)) {
        for s in page.snapshots {
            let wanted = match self.scope {
                Scope::Server(id) => s.server.id == id,
                Scope::Servers(wanted) => wanted.binary_search(&s.server.id).is_ok(),
                Scope::Account => true,
            };
            if wanted {
                sink(s);
            } else if matches!(self.scope, Scope::Server(_)) {
                self.others += 1;
            }
        }
        self.unreadable.extend(page.unreadable);
    }
}

/// What a listing has read so far, to tell a listing that changed, looped or outgrew its
/// `count` from one that can be trusted.
struct PagesRead<'a> {
    what: &'a str,
    /// The first page's `count`: every later page must say the same.
    count: Option<u64>,
    per_page: usize,
    pages: usize,
    records: usize,
    /// The most records a listing may hold: `count` and a margin for records that shifted
    /// onto a second page, else [`MAX_RECORDS`].
    most: usize,
    /// The memory its records take so far, bounded by [`MAX_LISTING_BYTES`].
    bytes: usize,
    /// The links followed, by their hash: a provider's links may be long.
    followed: HashSet<u64>,
}

impl<'a> PagesRead<'a> {
    fn new(what: &'a str, first: &ListedPage) -> Self {
        let most = first
            .count
            .and_then(|c| usize::try_from(c).ok())
            .map_or(MAX_RECORDS, |c| {
                c.saturating_add(c / 10)
                    .saturating_add(first.records.max(RECORDS_MARGIN))
                    .min(MAX_RECORDS)
            });
        Self {
            what,
            count: first.count,
            per_page: first.records,
            pages: 1,
            records: first.records,
            most,
            bytes: held_bytes(first),
            followed: HashSet::new(),
        }
    }

    /// An error if `link`, the way to page `number`, was followed before: the links loop.
    fn follow(&mut self, link: &str, number: usize) -> Result<(), ApiError> {
        if self.followed.insert(link_hash(link)) {
            return Ok(());
        }
        Err(ApiError::Decode {
            what: self.what.to_owned(),
            message: format!(
                "the `next` links loop: the link to page {number} leads back to a page already read"
            ),
        })
    }

    /// Takes page `number` into account; an error if the listing changed or has grown past
    /// what it promised.
    fn page(&mut self, number: usize, page: &ListedPage) -> Result<(), ApiError> {
        if page.count != self.count {
            return Err(self.changed(format!(
                "page 1 said {}, page {number} says {}",
                count_text(self.count),
                count_text(page.count)
            )));
        }
        self.pages += 1;
        self.records = self.records.saturating_add(page.records);
        self.bytes = self.bytes.saturating_add(held_bytes(page));
        if self.bytes > MAX_LISTING_BYTES {
            return Err(ApiError::Decode {
                what: self.what.to_owned(),
                message: format!(
                    "its records take more than {} MiB after {} pages ({} records); the pages \
                     seem to repeat or never end",
                    MAX_LISTING_BYTES >> 20,
                    self.pages,
                    self.records
                ),
            });
        }
        if self.records > self.most {
            return Err(ApiError::Decode {
                what: self.what.to_owned(),
                message: format!(
                    "more records than {} after {} pages; the pages seem to repeat or never end",
                    match self.count {
                        Some(c) if self.most < MAX_RECORDS => format!("its count of {c} promised"),
                        _ => format!("the {MAX_RECORDS} a listing may hold"),
                    },
                    self.pages
                ),
            });
        }
        Ok(())
    }

    fn changed(&self, how: String) -> ApiError {
        ApiError::Changed {
            what: self.what.to_owned(),
            message: how,
        }
    }
}

/// The memory a page's records take once kept: each record and its text.
fn held_bytes(page: &ListedPage) -> usize {
    let snapshots: usize = page
        .snapshots
        .iter()
        .map(|s| {
            std::mem::size_of::<Snapshot>()
                + s.name.len()
                + s.server.name.len()
                + s.description.as_ref().map_or(0, String::len)
        })
        .sum();
    let unreadable: usize = page
        .unreadable
        .iter()
        .map(|u| {
            std::mem::size_of::<Unreadable>() + u.error.len() + u.id.as_ref().map_or(0, String::len)
        })
        .sum();
    snapshots + unreadable
}

fn link_hash(link: &str) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault};
    BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(link)
}

/// An error when the provider's `next` link is longer than any real one.
fn check_link(what: &str, link: Option<&str>) -> Result<(), ApiError> {
    match link {
        Some(l) if l.len() > MAX_LINK_BYTES => Err(ApiError::Decode {
            what: what.to_owned(),
            message: format!(
                "a `next` link of {} bytes (at most {MAX_LINK_BYTES} are followed)",
                l.len()
            ),
        }),
        _ => Ok(()),
    }
}

fn count_text(count: Option<u64>) -> String {
    count.map_or_else(|| "no count".to_owned(), |c| format!("count {c}"))
}

/// An error naming the first unreadable record of a server `scope` asks about; else one
/// warning naming the others (a few by name, the rest counted).
pub fn check_unreadable(
    unreadable: &[Unreadable],
    scope: Scope<'_>,
    what: &str,
) -> Result<(), ApiError> {
    if let Some(first) = unreadable.iter().find(|u| scope.wants(u.server)) {
        let others = unreadable.iter().filter(|u| scope.wants(u.server)).count() - 1;
        return Err(ApiError::Decode {
            what: what.to_owned(),
            message: format!(
                "{first}{}",
                match others {
                    0 => String::new(),
                    n => format!(" (and {n} more unreadable records of the servers asked about)"),
                }
            ),
        });
    }
    if !unreadable.is_empty() {
        let mut named: Vec<String> = unreadable
            .iter()
            .take(UNREADABLE_NAMED)
            .map(ToString::to_string)
            .collect();
        if unreadable.len() > UNREADABLE_NAMED {
            named.push(format!("and {} more", unreadable.len() - UNREADABLE_NAMED));
        }
        tracing::warn!(
            "{what}: left out {} unreadable record(s), none of a server asked about: {}",
            unreadable.len(),
            named.join("; ")
        );
    }
    Ok(())
}

/// The links of pages 2..=n when `next` is DRF's page-number link (`page=2`) and the first
/// page's size and `count` give n; `None` for any other shape, or when there is only page 2.
fn numbered_pages(next: &str, count: Option<u64>, per_page: usize) -> Option<Vec<String>> {
    let count = usize::try_from(count?).ok()?;
    let pages = count.div_ceil(per_page.max(1));
    let url = url::Url::parse(next).ok()?;
    let is_page_two = url.query_pairs().any(|(k, v)| k == "page" && v == "2");
    if per_page == 0 || !is_page_two || pages <= 2 || pages > MAX_PAGES {
        return None;
    }
    let with_page = |n: usize| {
        let others: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(k, _)| k != "page")
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let mut u = url.clone();
        u.query_pairs_mut()
            .clear()
            .append_pair("page", &n.to_string())
            .extend_pairs(others);
        u.to_string()
    };
    Some((2..=pages).map(with_page).collect())
}

/// An API failure, worded for the operator who reads it in the journal.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("the API rejected the token (check {token_source}); answer 401")]
    Unauthorized { token_source: String },
    #[error("the API refused {what}: {message} (400)")]
    BadRequest { what: String, message: String },
    #[error("the API answered 404 (not found) to {what}: {message}")]
    NotFound { what: String, message: String },
    #[error("the API is rate limiting {what} (429){}", retry_hint(.retry_after))]
    RateLimited {
        what: String,
        retry_after: Option<Duration>,
    },
    #[error("the API failed {what} with {status}: {message}")]
    Server {
        what: String,
        status: u16,
        message: String,
    },
    #[error("{what} got no answer within {}", humantime::format_duration(*.timeout))]
    Timeout { what: String, timeout: Duration },
    /// The request may have been sent: the connection failed or was reset after it was open.
    #[error("could not reach the API for {what}: {message}")]
    Connection { what: String, message: String },
    /// No connection was made, so nothing was sent.
    #[error("could not reach the API for {what} (no connection was made): {message}")]
    Unreachable { what: String, message: String },
    /// A create whose answer was lost, and whose snapshot did not show up when looked for.
    #[error(
        "{what}: the answer was lost ({cause}) and the snapshot did not show up when looked \
         for; it is not sent again, since a second create could make a duplicate (the next \
         fire takes a new slot)"
    )]
    Unconfirmed { what: String, cause: String },
    #[error("the API's answer to {what} could not be read: {message}")]
    Decode { what: String, message: String },
    /// A listing that changed while its pages were read: a record can have moved onto a page
    /// already read, so the listing is not trusted.
    #[error("{what}: the listing changed while it was read ({message}); not trusted, as a snapshot may be missing from it")]
    Changed { what: String, message: String },
    /// Never followed: the token would go along, and the answer from there would choose what
    /// is deleted here.
    #[error(
        "the API answered {what} with a redirect ({status}) to {location}; redirects are refused \
         (set base_url to the address that answers)"
    )]
    Redirect {
        what: String,
        status: u16,
        location: String,
    },
    /// With `[ha]`: this host stopped leading the cluster before the request went out, so
    /// it was not sent.
    #[error("{what} was not sent: this host no longer leads the cluster ([ha])")]
    NotLeading { what: String },
    #[error("the API answered {what} with unexpected status {status}: {message}")]
    Unexpected {
        what: String,
        status: u16,
        message: String,
    },
}

fn retry_hint(retry_after: &Option<Duration>) -> String {
    match retry_after {
        Some(d) => format!(", retry after {}", humantime::format_duration(*d)),
        None => String::new(),
    }
}

impl ApiError {
    /// The error for an answer with this status (not 2xx, not a redirect), as every provider
    /// words it: `message` is the provider's own words, `retry_after` its `Retry-After`
    /// (bounded by [`MAX_RETRY_AFTER`]).
    pub fn from_status(
        status: u16,
        what: String,
        message: String,
        retry_after: Option<Duration>,
        token_source: &str,
    ) -> Self {
        match status {
            401 | 403 => Self::Unauthorized {
                token_source: token_source.to_owned(),
            },
            400 => Self::BadRequest { what, message },
            404 => Self::NotFound { what, message },
            429 => Self::RateLimited {
                what,
                retry_after: retry_after.map(|wait| wait.min(MAX_RETRY_AFTER)),
            },
            500..=599 => Self::Server {
                what,
                status,
                message,
            },
            _ => Self::Unexpected {
                what,
                status,
                message,
            },
        }
    }

    /// Whether the same request may succeed if sent again (for idempotent requests only).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::RateLimited { .. }
                | Self::Server { .. }
                | Self::Timeout { .. }
                | Self::Connection { .. }
                | Self::Unreachable { .. }
        )
    }

    /// Whether the provider said it did nothing (a 4xx, a 429), or no connection was made:
    /// a create that failed this way made no snapshot. Anything else (a 5xx, a lost or
    /// unreadable answer, a redirect) may have made one.
    pub fn not_carried_out(&self) -> bool {
        match self {
            Self::Unauthorized { .. }
            | Self::BadRequest { .. }
            | Self::NotFound { .. }
            | Self::RateLimited { .. }
            | Self::Unreachable { .. }
            | Self::NotLeading { .. } => true,
            // Any other 4xx (409, 422) refuses the request, but a 408 says the request was
            // not heard out, which a proxy may say of one already passed on.
            Self::Unexpected { status, .. } => (400..500).contains(status) && *status != 408,
            _ => false,
        }
    }

    /// Whether a create that failed this way may have happened anyway (answer lost or 5xx).
    pub fn outcome_unknown(&self) -> bool {
        matches!(
            self,
            Self::Server { .. } | Self::Timeout { .. } | Self::Connection { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ServerRef, SnapshotStatus};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Pages that never end, each with new records carrying 16 KiB descriptions, under a
    /// `count` of a million.
    #[derive(Default)]
    struct Endless {
        pages: AtomicUsize,
    }

    impl Provider for Endless {
        async fn list_page(
            &self,
            _scope: Scope<'_>,
            _link: Option<&str>,
        ) -> Result<ListedPage, ApiError> {
            let n = self.pages.fetch_add(1, Ordering::Relaxed) as u64;
            let snapshots: Vec<Snapshot> = (0..100)
                .map(|i| Snapshot {
                    id: n * 100 + i,
                    server: ServerRef {
                        id: 1,
                        name: "web".into(),
                    },
                    name: format!("s{n}-{i}"),
                    status: SnapshotStatus::Completed,
                    size_mb: None,
                    created_at: chrono::DateTime::UNIX_EPOCH,
                    description: Some("x".repeat(16 << 10)),
                })
                .collect();
            Ok(ListedPage {
                count: Some(1_000_000),
                next: Some(format!("https://api.test/snapshots/?cursor={}", n + 1)),
                records: snapshots.len(),
                snapshots,
                unreadable: Vec::new(),
            })
        }
        async fn create_snapshot(&self, _: &CreateSnapshot) -> Result<Snapshot, ApiError> {
            unimplemented!()
        }
        async fn delete_snapshot(&self, _: SnapshotId) -> Result<(), ApiError> {
            unimplemented!()
        }
        async fn restore_snapshot(&self, _: SnapshotId) -> Result<RestoreStarted, ApiError> {
            unimplemented!()
        }
        async fn get_server(&self, _: ServerId) -> Result<Server, ApiError> {
            unimplemented!()
        }
        async fn stop_server(&self, _: ServerId) -> Result<Server, ApiError> {
            unimplemented!()
        }
        async fn start_server(&self, _: ServerId) -> Result<Server, ApiError> {
            unimplemented!()
        }
    }

    /// A listing's memory is bounded in bytes, not only in records: a million records with
    /// long descriptions would be 16 GB, and the listing ends after about 256 MiB.
    #[tokio::test]
    async fn a_listing_of_long_records_that_never_ends_stops_at_its_memory_bound() {
        let endless = Endless::default();
        let err = list_pages(&endless, Scope::Account).await.unwrap_err();
        let text = err.to_string();
        assert!(text.contains("MiB"), "{text}");
        let pages = endless.pages.load(Ordering::Relaxed);
        let page_bytes = 100 * (16 << 10);
        assert!(
            pages <= MAX_LISTING_BYTES / page_bytes + 1,
            "{pages} pages read: {} MiB",
            (pages * page_bytes) >> 20
        );
    }

    /// A create refused by a 4xx made nothing, and the next run in its slot may send it; one
    /// whose answer was a 5xx, a 408 or never came may have made a snapshot.
    #[test]
    fn only_a_refusal_says_a_create_made_nothing() {
        let status = |code| ApiError::from_status(code, "create".into(), String::new(), None, "");
        for code in [400, 401, 403, 404, 409, 422, 429] {
            assert!(status(code).not_carried_out(), "{code}");
        }
        for code in [408, 500, 502, 503, 504, 302] {
            assert!(!status(code).not_carried_out(), "{code}");
        }
        let timeout = ApiError::Timeout {
            what: "create".into(),
            timeout: Duration::from_secs(30),
        };
        assert!(!timeout.not_carried_out());
    }

    /// A `next` link longer than any real one is an error, not copied for every page.
    #[test]
    fn a_next_link_of_megabytes_is_an_error() {
        let link = format!("https://api.test/?page=2&x={}", "a".repeat(1 << 20));
        let err = check_link("list snapshots", Some(&link)).unwrap_err();
        assert!(err.to_string().contains("next"), "{err}");
        assert!(check_link("list snapshots", Some("https://api.test/?page=2")).is_ok());
    }
}
