//! Which lifecycle log entries are webhook events, and the body each is sent as.

use custos_cloud_api::webhook::{
    EventError, EventRequest, EventType, WebhookEvent, MAX_EVENT_BYTES,
};
use custos_cloud_api::ErrorCode;

use crate::config::ConsoleConfig;
use crate::db::RequestRow;

/// Longest error message sent when the whole body would exceed [`MAX_EVENT_BYTES`].
const SHORT_MESSAGE: usize = 1024;
/// Longest error code sent then.
const SHORT_CODE: usize = 64;

/// The webhook events in `row`'s log after position `after`, oldest first, with their
/// positions; each links to the request's console page when `console` serves the
/// request's tenant.
///
/// `created` is `request.pending` unless the request arrived with its quorum (its next
/// entry is then `submitting`, in the same write); the first `submitting` is
/// `request.approved`; `completed`, `refused`, `rejected` (`request.refused`,
/// `rejected_by_admin`), `expired` and `failed` are what they say. Approvals below the
/// quorum, resubmissions, sessions and unknown outcomes are not events.
pub fn events_after(
    row: &RequestRow,
    after: i64,
    console: Option<&ConsoleConfig>,
) -> Vec<(i64, WebhookEvent)> {
    let log = &row.events;
    let console_url = console
        .filter(|c| c.tenant == row.tenant)
        .map(|c| format!("{}/console/requests/{}", c.origin, row.id));
    let mut out = Vec::new();
    for (i, e) in log.iter().enumerate().filter(|(_, e)| e.seq > after) {
        let event = match e.event.as_str() {
            "created" if log.get(i + 1).is_some_and(|n| n.event == "submitting") => continue,
            "created" => EventType::Pending,
            "submitting" if log[..i].iter().any(|p| p.event == "submitting") => continue,
            "submitting" => EventType::Approved,
            "completed" => EventType::Completed,
            "refused" | "rejected" => EventType::Refused,
            "expired" => EventType::Expired,
            "failed" => EventType::Failed,
            _ => continue,
        };
        let error = match e.event.as_str() {
            "rejected" => Some((
                crate::service::REJECTED.to_string(),
                format!("rejected by admin {}", e.detail),
            )),
            // Written `code: message` (`Failure::record`).
            "refused" | "failed" => Some(match e.detail.split_once(": ") {
                Some((code, message)) => (code.to_string(), message.to_string()),
                None => (e.event.clone(), e.detail.clone()),
            }),
            "expired" => Some((
                ErrorCode::RequestExpired.as_str().to_string(),
                e.detail.clone(),
            )),
            _ => None,
        };
        let event = WebhookEvent {
            id: format!("{}.{}", row.id, e.seq),
            event,
            occurred_at: e.at,
            request: EventRequest {
                id: row.id.clone(),
                kind: row.kind(),
                cluster: row.cluster.clone(),
                tenant: row.tenant.clone(),
                status: event.status(),
                quorum: row.quorum,
            },
            error: error.map(|(code, message)| EventError { code, message }),
            console_url: console_url.clone(),
        };
        out.push((e.seq, event));
    }
    out
}

/// The JSON sent for `event`: within [`MAX_EVENT_BYTES`] (receivers refuse more), its
/// error message shortened and console link dropped if need be.
pub fn body_of(event: &mut WebhookEvent) -> String {
    let body = serde_json::to_string(&event).expect("events serialize");
    if body.len() <= MAX_EVENT_BYTES {
        return body;
    }
    event.console_url = None;
    if let Some(e) = &mut event.error {
        for (text, most) in [(&mut e.code, SHORT_CODE), (&mut e.message, SHORT_MESSAGE)] {
            let cut = (0..=most.min(text.len()))
                .rev()
                .find(|&n| text.is_char_boundary(n))
                .unwrap_or(0);
            text.truncate(cut);
        }
    }
    let body = serde_json::to_string(&event).expect("events serialize");
    if body.len() <= MAX_EVENT_BYTES {
        return body;
    }
    // Escaping can multiply a message's length: then it goes, the code says enough.
    if let Some(e) = &mut event.error {
        e.message = "(too long to send; read the request)".into();
    }
    serde_json::to_string(&event).expect("events serialize")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::EventRow;
    use crate::terms::Terms;
    use custos_cloud_api::RequestStatus;
    use EventType::*;

    fn row(log: &[(&str, &str)]) -> RequestRow {
        RequestRow {
            version: log.len() as i64,
            events: (1..)
                .zip(log)
                .map(|(seq, (event, detail))| EventRow {
                    seq,
                    at: 1000 + seq as u64,
                    event: event.to_string(),
                    detail: detail.to_string(),
                })
                .collect(),
            ..RequestRow::sample("dc1", Terms::CreateWallet { node: None })
        }
    }

    fn types(log: &[(&str, &str)], after: i64) -> Vec<(i64, EventType)> {
        events_after(&row(log), after, None)
            .into_iter()
            .map(|(seq, e)| (seq, e.event))
            .collect()
    }

    /// A request stored submitting on arrival never waited; approvals below quorum,
    /// sessions, unknown outcomes and resubmissions after a failure are no events; a
    /// read that resumes after some entries sends only the new ones.
    #[test]
    fn only_state_changes_people_act_on_are_events() {
        let arrived = [
            ("created", ""),
            ("submitting", "attempt 1"),
            ("completed", ""),
        ];
        assert_eq!(types(&arrived, 0), [(2, Approved), (3, Completed)]);
        let long = [
            ("created", ""),
            ("approved", "alice"),
            ("approved", "bob"),
            ("submitting", "attempt 1"),
            ("session", "attempt 1: dc1, dc2"),
            ("outcome_unknown", "link_timeout: lost"),
            ("resubmitting", "attempt 2"),
            ("failed", "cluster_unreachable: dc1 down"),
            ("submitting", "attempt 3"),
            ("completed", "served by dc1-node2"),
        ];
        assert_eq!(
            types(&long, 0),
            [(1, Pending), (4, Approved), (8, Failed), (10, Completed)]
        );
        assert_eq!(types(&long, 4), [(8, Failed), (10, Completed)]);
        assert_eq!(types(&long, 10), []);
        let failed = &events_after(&row(&long), 7, None)[0].1;
        let error = failed.error.as_ref().unwrap();
        assert_eq!(
            (error.code.as_str(), error.message.as_str()),
            ("cluster_unreachable", "dc1 down")
        );
        assert_eq!(failed.id, format!("{}.8", "ab".repeat(16)));
        assert_eq!(failed.request.status, RequestStatus::Failed);

        let rejected = events_after(
            &row(&[("created", ""), ("rejected", "bob (ab12)")]),
            0,
            None,
        );
        let error = rejected[1].1.error.as_ref().unwrap();
        assert_eq!(
            (rejected[1].1.event, error.code.as_str()),
            (Refused, "rejected_by_admin")
        );
        let expired = events_after(&row(&[("created", ""), ("expired", "1 of 2")]), 0, None);
        assert_eq!(expired[1].1.error.as_ref().unwrap().code, "request_expired");
    }

    /// Console links only for the tenant the console serves; a body never exceeds what
    /// receivers read.
    #[test]
    fn links_follow_the_consoles_tenant_and_bodies_stay_within_the_limit() {
        let mut console = ConsoleConfig::new("https://console.example", "admins".into());
        let log = [
            ("created", ""),
            ("refused", &*format!("tee_policy: {}", "x".repeat(20_000))),
        ];
        let events = events_after(&row(&log), 0, Some(&console));
        assert_eq!(
            events[0].1.console_url.as_deref(),
            Some(&*format!(
                "https://console.example/console/requests/{}",
                "ab".repeat(16)
            ))
        );
        let mut big = events[1].1.clone();
        let body = body_of(&mut big);
        assert!(body.len() <= MAX_EVENT_BYTES);
        assert_eq!(big.error.unwrap().message.len(), SHORT_MESSAGE);
        console.tenant = "acme".into();
        assert_eq!(
            events_after(&row(&log), 0, Some(&console))[0].1.console_url,
            None
        );
    }
}
