//! Admitting a command, in three steps:
//!
//! 1. **admit**: the gate's decision ([`gate::decide`]) on the command,
//!    the grant as of now and the trusted keys; the nonce is remembered;
//!    the owner's agent is checked ready to start;
//! 2. **register**: under the daemon's lock, the grant is checked again
//!    (a revoke between the gate and here must find a task to stop, or
//!    none), then its budget ([`gate::budget_left`]: `BUDGET_EXHAUSTED`)
//!    and the room for it ([`gate::room_for`]: `BUSY`, one agent task at a
//!    time); the task's entry goes into the table and counts against the
//!    budget, all under that one lock;
//! 3. **launch**: the `action.started` record, with the command's nonce, is
//!    made durable, and only then does anything run (if it cannot be
//!    written, the task is taken out and no longer counts).
//!
//! A refusal at any step is audited (`action.denied`) and answered with a
//! `denied` frame; nothing of the command is left behind. A refusal before
//! a trusted signature held is counted instead, its window's first of each
//! code in full (`denials.rs`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::gate::{self, Approved, Decision, Denial, Snapshot, Verdict};
use super::records::{carry_nonce, denial_record, render_argv, task_record};
use super::task::{ForgetOnDrop, TaskEntry};
use super::{Daemon, exec};
use crate::audit::Event;
use crate::control_api::TaskView;
use crate::policy::Kind;
use crate::protocol::{DenyCode, DeviceFrame, Run};
use crate::transcript::Transcript;

/// A command refused at one of the steps, with what its record needs.
struct Refusal {
    /// The operator's name if trusted, else its key's fingerprint.
    operator: Option<String>,
    /// Whether the command's signature held (then its parameters may be recorded).
    signed: bool,
    denial: Denial,
}

/// A command the gate let through, ready to register.
struct Admitted {
    approved: Approved,
    task_id: String,
    env: Vec<(String, String)>,
    /// The agent host to post to, for an agent task with `[agent] endpoint`.
    http: Option<exec::HttpAgent>,
}

/// A task in the table, not started yet; then what its driver holds.
pub(super) struct Registered {
    pub(super) spec: exec::Spec,
    pub(super) info: TaskView,
    pub(super) stop: watch::Receiver<Option<crate::protocol::StoppedBy>>,
    pub(super) done: watch::Sender<Option<crate::protocol::TaskResult>>,
    pub(super) transcript: Arc<Mutex<Transcript>>,
    /// Takes the entry out again however admission or the driver ends.
    pub(super) forget: ForgetOnDrop,
    /// An interactive session's checked operator frames.
    pub(super) keys: Option<mpsc::Receiver<crate::protocol::Keys>>,
}

impl Daemon {
    /// Decides on a signed command and, if it passes, starts it. Frames go
    /// to `frames`: `denied`, or `accepted`, `output`…, `result`. Returns
    /// the task id, or the denial (also sent as a frame and audited).
    pub async fn submit(&self, run: Run, frames: mpsc::Sender<DeviceFrame>) -> Result<String, Denial> {
        let admitted = match self.admit(&run).await {
            Ok(a) => a,
            Err(refusal) => return self.deny(&run, refusal, &frames).await,
        };
        let operator = Some(admitted.approved.operator.clone());
        let registered = match self.register(&run, admitted) {
            Ok(r) => r,
            Err(denial) => return self.deny(&run, Refusal { operator, signed: true, denial }, &frames).await,
        };
        match self.launch(registered, &run, frames.clone()).await {
            Ok(task_id) => Ok(task_id),
            Err(denial) => self.deny(&run, Refusal { operator, signed: true, denial }, &frames).await,
        }
    }

    /// Step 1: the gate, with consent as of now (not as of the last poll).
    async fn admit(&self, run: &Run) -> Result<Admitted, Refusal> {
        self.consent_changed().await;
        let trusted = crate::trust::list(&self.inner.paths);
        let now = self.inner.options.clock.wall();
        let decision = {
            let mut state = self.state();
            state.replay.prune(now);
            let decision = match &trusted {
                Ok(trusted) => gate::decide(
                    run,
                    Snapshot {
                        device_id: &self.inner.device_id,
                        now,
                        consent: &state.consent.effective,
                        catalogue: &self.inner.catalogue,
                        trusted,
                        replay: &state.replay,
                        not_before: self.inner.started_at,
                        used: state.consent.effective.live().and_then(|g| state.consent.used.get(&g.grant_id).copied()),
                    },
                ),
                Err(e) => Decision {
                    verdict: Verdict::Deny(Denial {
                        code: DenyCode::UntrustedOperator,
                        message: format!("the owner's trusted operators cannot be read: {}", crate::ErrorChain(e)),
                    }),
                    remember_nonce: false,
                    operator: None,
                },
            };
            if decision.remember_nonce {
                state.replay.insert(&run.nonce, &run.issued_at, now);
            }
            decision
        };
        let approved = match decision.verdict {
            Verdict::Deny(denial) => {
                return Err(Refusal { operator: decision.operator, signed: decision.remember_nonce, denial });
            }
            Verdict::Run(a) => *a,
        };
        let task_id = format!("t-{}", crate::random_hex(8));
        // vars() would panic on a name or value that is not UTF-8: such a variable is left out.
        let daemon_env = std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
        let names = match approved.action.kind {
            Kind::Agent => super::agent::env_names(&approved.action.env),
            _ => approved.action.env.clone(),
        };
        let env = exec::environment(&names, daemon_env, &task_id);
        let http = if approved.action.kind == Kind::Agent {
            let cwd = crate::paths::expand_home(&approved.action.cwd);
            self.prepare_agent(&approved.rendered, &run.params, &task_id, &env, &cwd).map_err(|denial| Refusal {
                operator: Some(approved.operator.clone()),
                signed: true,
                denial,
            })?
        } else {
            None
        };
        Ok(Admitted { approved, task_id, env, http })
    }

    /// Step 2: the task's entry goes into the table if the grant still
    /// covers it and there is room ([`gate::room_for`]).
    fn register(&self, run: &Run, admitted: Admitted) -> Result<Registered, Denial> {
        let Admitted { approved, task_id, env, http } = admitted;
        let agent = approved.action.kind == Kind::Agent;
        let cgroup = self.inner.cgroup.as_ref().and_then(|d| d.for_task(&task_id));
        let info = TaskView {
            task_id: task_id.clone(),
            request_id: run.request_id.clone(),
            action: approved.action.name.clone(),
            tier: approved.action.tier.get(),
            agent,
            interactive: run.is_session(),
            params: run.params.clone(),
            operator: approved.operator.clone(),
            grant_id: approved.grant.grant_id.clone(),
            started_at: crate::time::rfc3339(self.inner.options.clock.wall()),
            pid: None,
            start_ticks: None,
            cgroup: cgroup.as_ref().map(|c| c.dir().to_path_buf()),
            boot_id: super::files::boot_id(),
        };
        let (stop_tx, stop) = watch::channel(None);
        let (done, done_rx) = watch::channel(None);
        let transcript = Arc::new(Mutex::new(Transcript::new(agent)));
        let (inlet, keys) = match run.is_session() {
            true => match super::session::Inlet::new(&self.inner.device_id, run) {
                Some((inlet, keys)) => (Some(inlet), Some(keys)),
                None => {
                    return Err(Denial {
                        code: DenyCode::BadSignature,
                        message: "the session's operator key does not parse".into(),
                    });
                }
            },
            false => (None, None),
        };
        let refused = {
            let mut state = self.state();
            // The grant is checked again where the task is registered: a
            // revoke or expiry between the gate and here finds no task to stop.
            let still = state
                .consent
                .effective
                .live()
                .filter(|g| g.grant_id == approved.grant.grant_id && g.tier >= approved.action.tier);
            let refused = if let Some(grant) = still {
                let agent_task = state.tasks.values().find(|t| t.info.agent).map(|t| t.info.task_id.as_str());
                let used = state.consent.used.get(&grant.grant_id).copied();
                gate::budget_left(grant, used)
                    .and_then(|()| gate::room_for(agent, state.tasks.len(), self.inner.options.max_tasks, agent_task))
                    .err()
            } else {
                Some(Denial {
                    code: DenyCode::NoConsent,
                    message: "the owner's grant ended or changed while the command was being checked".into(),
                })
            };
            if refused.is_none() {
                if let Some(n) = state.consent.used.get_mut(&approved.grant.grant_id) {
                    *n = n.saturating_add(1);
                }
                let mut entry = TaskEntry::new(info.clone(), stop_tx, done_rx, transcript.clone());
                entry.session = inlet;
                state.tasks.insert(task_id.clone(), entry);
                self.persist_tasks(&state);
            }
            refused
        };
        if let Some(denial) = refused {
            if let Some(cg) = &cgroup {
                cg.remove();
            }
            return Err(denial);
        }
        let forget = ForgetOnDrop::new(self, &task_id);
        let spec = exec::Spec {
            task_id,
            commands: approved.rendered.commands,
            stdin: approved.rendered.stdin,
            env,
            cwd: crate::paths::expand_home(&approved.action.cwd),
            timeout: Duration::from_secs(approved.action.timeout_s),
            max_output_bytes: approved.action.max_output_bytes,
            cgroup,
            http,
            // Set by the run loop, which sees the transcript's progress.
            idle: None,
        };
        Ok(Registered { spec, info, stop, done, transcript, forget, keys })
    }

    /// Step 3: `action.started` is made durable, then the task starts.
    /// Returns its id.
    ///
    /// # Errors
    /// `AUDIT_UNAVAILABLE` when the record cannot be written: the entry is
    /// taken out again and nothing runs.
    async fn launch(
        &self,
        registered: Registered,
        run: &Run,
        frames: mpsc::Sender<DeviceFrame>,
    ) -> Result<String, Denial> {
        let (spec, info) = (&registered.spec, &registered.info);
        let mut started = task_record(Event::ActionStarted, info);
        carry_nonce(&mut started, run);
        started.detail = Some(match &spec.http {
            Some(h) => format!("POST http://{}{} (the agent host)", h.host, h.path),
            None => format!("argv {}", render_argv(&spec.commands)),
        });
        if let Err(e) = self.audit(vec![started]).await {
            tracing::error!(task = %info.task_id, error = %crate::ErrorChain(&e), "action.started could not be written; denying");
            // Not on the record, so not started: it no longer counts against the budget.
            if let Some(n) = self.state().consent.used.get_mut(&info.grant_id) {
                *n = n.saturating_sub(1);
            }
            if let Some(cg) = &spec.cgroup {
                cg.remove();
            }
            drop(registered);
            return Err(Denial {
                code: DenyCode::AuditUnavailable,
                message: format!(
                    "the device's audit log cannot be written, so nothing runs: {}",
                    crate::ErrorChain(&e)
                ),
            });
        }
        let accepted = DeviceFrame::accepted(&info.request_id, &info.task_id);
        let _ = frames.send(accepted).await;
        let task_id = info.task_id.clone();
        let me = self.clone();
        let span = tracing::info_span!("task", id = %info.task_id, action = %info.action);
        tokio::spawn(tracing::Instrument::instrument(async move { me.drive(registered, frames).await }, span));
        Ok(task_id)
    }

    /// Audits a refusal and answers it with a `denied` frame.
    async fn deny(&self, run: &Run, refusal: Refusal, frames: &mpsc::Sender<DeviceFrame>) -> Result<String, Denial> {
        let Refusal { operator, signed, denial } = refusal;
        // Anyone can send what fails before a trusted signature: counted, not each written (denials.rs).
        let in_full =
            !super::denials::unverified(denial.code) || self.count_unverified(denial.code, operator.as_deref());
        if in_full {
            let known_action = self.inner.catalogue.get(&run.action).is_ok();
            let mut record = denial_record(run, operator, signed && known_action, &denial);
            if signed {
                carry_nonce(&mut record, run);
            }
            if let Err(e) = self.audit(vec![record]).await {
                tracing::error!(error = %crate::ErrorChain(&e), code = denial.code.as_str(), "could not record a denial");
                if signed {
                    // Its nonce is in no record: kept for the next start elsewhere (replay.rs).
                    let (paths, nonce, issued_at) =
                        (self.inner.paths.clone(), run.nonce.clone(), run.issued_at.clone());
                    let kept =
                        tokio::task::spawn_blocking(move || super::replay::record_lost(&paths, &nonce, &issued_at))
                            .await;
                    if !matches!(kept, Ok(Ok(()))) {
                        tracing::error!("the nonce of a refused command could not be kept for the next start either");
                    }
                }
            }
            tracing::info!(code = denial.code.as_str(), message = %denial.message, "denied a command");
        } else {
            tracing::debug!(code = denial.code.as_str(), message = %denial.message, "denied a command (counted)");
        }
        let _ = frames.send(DeviceFrame::denied(&run.request_id, denial.code, &denial.message)).await;
        Err(denial)
    }
}
