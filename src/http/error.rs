//! The one place where internal errors become HTTP answers. Client errors keep their detail; server
//! errors are logged here and answered generically, so no database message reaches a caller.
//! (`ApiError` itself lives in the channel contract so that channel routes answer in the same shape.)

pub use earshot_channel::ApiError;

use crate::store::StoreError;

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "Store error while answering a request.");
        ApiError::unavailable("store_unavailable", "the store is unavailable; retry later")
    }
}
