//! The one cell through which the control plane hands routing tables to the data plane.
//! Publishing is a single pointer store; readers never wait and never see a half-built table.
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::table::RouteTable;

/// The writing end, held by the control plane only.
#[derive(Debug)]
pub struct Publisher(Arc<ArcSwap<RouteTable>>);

/// The reading end, cloned into every worker.
#[derive(Debug, Clone)]
pub struct Reader(Arc<ArcSwap<RouteTable>>);

/// Creates the cell holding `table`.
pub fn channel(table: RouteTable) -> (Publisher, Reader) {
    let cell = Arc::new(ArcSwap::from_pointee(table));
    (Publisher(Arc::clone(&cell)), Reader(cell))
}

impl Publisher {
    /// Makes `table` the one new requests see; requests in flight keep theirs.
    pub fn publish(&self, table: RouteTable) {
        self.0.store(Arc::new(table));
    }

    /// The table currently published.
    pub fn current(&self) -> Arc<RouteTable> {
        self.0.load_full()
    }

    /// A reader of this cell.
    pub fn reader(&self) -> Reader {
        Reader(Arc::clone(&self.0))
    }
}

impl Reader {
    /// The current table. Requests keep the returned `Arc` for their whole life, so one request
    /// is routed, forwarded and counted by exactly one generation.
    #[inline]
    pub fn load(&self) -> Arc<RouteTable> {
        self.0.load_full()
    }
}
