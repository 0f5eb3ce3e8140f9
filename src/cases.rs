//! Reading cases back as the schema's [`Case`].

use crate::schema::{Case, Message};
use crate::store::{Store, StoreError};

/// The case with its messages and current ticket id, or `None` if there is no such case.
pub async fn load(store: &dyn Store, id: &str) -> Result<Option<Case>, StoreError> {
    let Some((row, messages)) = store.get_case(id).await? else {
        return Ok(None);
    };
    let mut case: Case = serde_json::from_str(&row.data).map_err(|e| StoreError::Corrupt(format!("case {id}: {e}")))?;
    for m in messages {
        let m: Message =
            serde_json::from_str(&m).map_err(|e| StoreError::Corrupt(format!("message of case {id}: {e}")))?;
        case.messages.push(m);
    }
    case.ticket_id = row.ticket_id;
    Ok(Some(case))
}
