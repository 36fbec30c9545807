//! The driver: the only part of a threshold session that talks to clusters. It records the
//! session, runs its exchanges (every participant fed concurrently, answers verified and
//! handed to the state machine) until all outputs are in or the session aborts, and then
//! aborts it in the participants that still hold it.

use super::*;

impl Cloud {
    /// Forgets the clusters blamed in earlier attempts of a request that has now ended well.
    pub(super) fn forget_blame(&self, request_id: &str) {
        self.threshold_blamed
            .lock()
            .expect("blame lock")
            .remove(request_id);
    }

    /// Records a session's participants as the request's `session` event; returns the stored
    /// row and the participants as text for the log.
    pub(super) async fn record_session(
        &self,
        row: &RequestRow,
        attempt: u8,
        participants: &[Participant],
    ) -> Result<(RequestRow, String), StoreError> {
        let described = participants
            .iter()
            .map(|p| format!("{}/{} (share {})", p.cluster, p.node, p.share_index))
            .collect::<Vec<_>>()
            .join(", ");
        let mut next = row.clone();
        next.updated_at = self.now_ms();
        let row = self
            .store
            .update_request(
                &next,
                "session",
                format!("attempt {attempt}: {described}"),
                None,
            )
            .await?;
        Ok((row, described))
    }

    /// Runs a started session to its end within `limit`; on failure (including the time
    /// limit) tells every participant to abort before the caller records the failure.
    pub(super) async fn drive_session(
        &self,
        request_id: &str,
        start: &[u8],
        st: &mut Session<'_>,
        limit: Duration,
    ) -> Result<(), Abort> {
        // A replica that lost its heartbeat starts no session: another replica may be taking
        // the request over, and its takeover waits for one session's limit only.
        if !self.replica().fresh() {
            return Err(Abort::new(
                "replica_unavailable",
                format!(
                    "cloud server replica {} has not renewed its heartbeat for half its TTL; \
                     it starts no session",
                    self.replica().id
                ),
                Vec::new(),
            ));
        }
        let outcome =
            match tokio::time::timeout(limit, self.run_session(request_id, start, st)).await {
                Ok(r) => r,
                Err(_) => Err(st.timed_out()),
            };
        if let Err(abort) = &outcome {
            self.abort_session(st, &abort.message).await;
        }
        outcome
    }

    pub(super) async fn run_session(
        &self,
        request_id: &str,
        start: &[u8],
        st: &mut Session<'_>,
    ) -> Result<(), Abort> {
        let participants = st.participants;
        let session = st.session;
        let run = st.run;
        // Each TEE checks the other clusters' participants against their logs when the key
        // anchors them (plan step D5): it must hold them before the start.
        let nodes: Vec<(&str, &str)> = participants
            .iter()
            .map(|p| (p.cluster.as_str(), p.node.as_str()))
            .collect();
        self.push_foreign_logs(&nodes).await;
        st.in_flight = (0..participants.len()).collect();
        let starts = participants.iter().map(|p| {
            let link_id = start_link_id(&session.request_id, session.attempt, &p.cluster);
            self.start_on(&p.cluster, &p.node, link_id, start)
        });
        let answers = futures::future::join_all(starts).await;
        st.in_flight.clear();
        st.absorb_all(answers.into_iter().enumerate().collect())?;
        loop {
            if st.done() {
                return Ok(());
            }
            let targets: Vec<usize> = (0..participants.len())
                .filter(|&q| {
                    st.output[q].is_none() && (!st.pending[q].is_empty() || st.computing[q])
                })
                .collect();
            if targets.is_empty() {
                return Err(st.stalled("no message to relay"));
            }
            let mut phases: Vec<&str> = Vec::new();
            let mut count = 0;
            for &q in &targets {
                for m in &st.pending[q] {
                    count += 1;
                    if !phases.contains(&m.phase.as_str()) {
                        phases.push(m.phase.as_str());
                    }
                }
            }
            if count == 0 {
                // Everyone is still computing: collect what they produce.
                st.polls += 1;
                tokio::time::sleep(POLL_PAUSE).await;
                tracing::debug!(
                    request_id,
                    attempt = session.attempt,
                    poll = st.polls,
                    to = %names(&st.clusters(targets.iter().copied())),
                    "threshold poll"
                );
            } else {
                if st.exchanges >= run.max_exchanges() {
                    return Err(st.stalled(&format!(
                        "no {} after {} exchanges",
                        run.output(),
                        run.max_exchanges()
                    )));
                }
                st.exchanges += 1;
                tracing::info!(
                    request_id,
                    attempt = session.attempt,
                    exchange = st.exchanges,
                    phase = %phases.join("/"),
                    messages = count,
                    to = %names(&st.clusters(targets.iter().copied())),
                    "threshold exchange"
                );
            }
            let feeds: Vec<(usize, Vec<Vec<ThresholdMessage>>)> =
                targets.iter().map(|&q| (q, st.take_batches(q))).collect();
            st.in_flight = targets;
            let calls = feeds.into_iter().map(|(q, mut batches)| async move {
                let p = &participants[q];
                if batches.is_empty() {
                    // A participant still computing: an empty feed collects its output.
                    batches.push(Vec::new());
                }
                let mut answers = Vec::new();
                for messages in batches {
                    let request = encode_request(&Request::ThresholdFeed { session, messages });
                    let a = self
                        .clusters
                        .tee_call(&p.cluster, random_id(), &request, Some(&p.node))
                        .await;
                    // A refusal, or the output (the TEE dropped the session): the rest of the
                    // messages would find no session.
                    let stop = !still_open(&a);
                    answers.push((q, a));
                    if stop {
                        break;
                    }
                }
                answers
            });
            let answers: Vec<(usize, Result<TeeAnswer, CallError>)> =
                futures::future::join_all(calls)
                    .await
                    .into_iter()
                    .flatten()
                    .collect();
            st.in_flight.clear();
            st.absorb_all(answers)?;
        }
    }

    /// Best effort: tells every participant whose TEE may still hold the session to drop
    /// it.
    pub(super) async fn abort_session(&self, st: &Session<'_>, why: &str) {
        let reason: String = why.chars().take(MAX_ABORT_REASON).collect();
        let request = encode_request(&Request::ThresholdAbort {
            session: st.session,
            reason,
        });
        let calls = st
            .participants
            .iter()
            .enumerate()
            .filter(|(i, _)| !st.ended[*i])
            .map(|(_, p)| {
                let request = &request;
                async move {
                    let r = tokio::time::timeout(
                        ABORT_TIMEOUT,
                        self.clusters
                            .tee_call(&p.cluster, random_id(), request, Some(&p.node)),
                    )
                    .await;
                    match r {
                        Ok(Ok(TeeAnswer {
                            outcome: Ok(Response::ThresholdAborted(_)),
                            ..
                        })) => tracing::info!(
                            cluster = %p.cluster,
                            node = %p.node,
                            session = %session_text(&st.session),
                            "threshold session aborted"
                        ),
                        Ok(Ok(a)) => tracing::info!(
                            cluster = %p.cluster,
                            node = %p.node,
                            answer = ?a.outcome.map(|r| response_name(&r)),
                            "threshold abort answered"
                        ),
                        Ok(Err(e)) => tracing::warn!(
                            cluster = %p.cluster,
                            node = %p.node,
                            error = %e,
                            "threshold abort not delivered"
                        ),
                        Err(_) => tracing::warn!(
                            cluster = %p.cluster,
                            node = %p.node,
                            "threshold abort timed out"
                        ),
                    }
                }
            });
        futures::future::join_all(calls).await;
    }
}
