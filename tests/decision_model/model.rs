//! The model: what the daemon must decide, from DESIGN §1 and §11 and
//! SECURITY.md, in a few lines per rule. Times are whole seconds from the
//! case's start: `t` is true time (the operators' clocks, and the
//! monotonic clock), `t + skew` is the device's wall clock.

use std::collections::HashMap;

use support::DenyCode;

/// The catalogue the test writes: (name, tier, runs until stopped).
/// The last is not catalogued.
pub const ACTIONS: [(&str, u8, bool); 6] = [
    ("quick", 1, false),
    ("slow-1", 1, true),
    ("slow-2", 2, true),
    ("slow-3", 3, true),
    ("slow-4", 4, true),
    ("format-disk", 1, false),
];
/// The operators a grant may name, by index.
pub const OPERATORS: [&str; 2] = ["alice", "bob"];
/// The daemon's `max_tasks`.
pub const MAX_TASKS: usize = 8;
const FRESHNESS_S: i64 = 120;
const CLOCK_SKEW_S: i64 = 60;
const MAX_GRANT_S: i64 = 480 * 60;

/// Who signs a command: `alice` is always trusted, `bob` while the owner
/// trusts him.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Who {
    Alice,
    Bob,
}

/// A command as the test sends it.
#[derive(Clone, Debug)]
pub enum Cmd {
    /// Signed now by `who`, for this device.
    Valid { who: Who, action: usize },
    /// Signed by a key nobody trusts.
    Stranger { action: usize },
    /// Signed by alice, then its action changed.
    Altered { action: usize },
    /// Signed by alice for another device.
    OtherDevice { action: usize },
    /// Signed by alice, issued `offset` s from her clock.
    Skewed { action: usize, offset: i64 },
    /// A command sent before (by index from the newest, modulo how many),
    /// as it was or with a new request id.
    Replay { back: usize, new_request_id: bool },
}

/// One step of a sequence.
#[derive(Clone, Debug)]
pub enum Step {
    /// `support allow`: a new grant (`operators`, `only`: indices).
    Allow { tier: u8, secs: u64, operators: Option<Vec<usize>>, only: Option<Vec<usize>>, max_actions: Option<u32> },
    /// `support revoke`.
    Revoke,
    /// Time passes on both clocks (s).
    Pass(i64),
    /// The device's wall clock is set by this many seconds.
    SetWall(i64),
    /// `support trust add bob` (true) or `trust remove bob`.
    TrustBob(bool),
    /// A clean restart.
    Restart,
    /// A crash: no shutdown path.
    Crash,
    /// The audit store starts failing every write.
    BreakAudit,
    /// It works again.
    HealAudit,
    /// A command.
    Send(Cmd),
}

/// A command as the model sees it.
#[derive(Clone, Debug)]
pub struct Sent {
    pub signer: Option<Who>,
    /// Altered, for another device, or a new request id on a signed command.
    pub bad_signature: bool,
    /// When it was issued (true time, s).
    pub issued: i64,
    pub nonce: String,
    pub action: usize,
    /// The daemon start it was signed after (see [`Model::epoch`]).
    pub epoch: u64,
}

#[derive(Clone, Debug)]
pub struct Grant {
    pub id: String,
    pub tier: u8,
    pub granted: i64,
    pub expires: i64,
    pub operators: Option<Vec<usize>>,
    pub only: Option<Vec<usize>>,
    pub max_actions: Option<u32>,
}

impl Grant {
    fn covers(&self, task: &Task) -> bool {
        self.tier >= ACTIONS[task.action].1
            && self.operators.as_ref().is_none_or(|o| o.contains(&task.operator))
            && self.only.as_ref().is_none_or(|o| o.contains(&task.action))
    }
}

/// A task the model says runs.
#[derive(Clone, Debug)]
pub struct Task {
    pub request_id: String,
    pub action: usize,
    pub operator: usize,
}

/// What the model expects of a command: it runs, or one of these codes.
#[derive(Debug, PartialEq, Eq)]
pub enum Expect {
    Run,
    Deny(Vec<DenyCode>),
    /// No daemon is up to receive it.
    Undelivered,
}

#[derive(Clone)]
pub struct Model {
    pub t: i64,
    pub skew: i64,
    pub grant: Option<Grant>,
    /// Per grant id: the monotonic deadline this daemon fixed (reset at start).
    deadlines: HashMap<String, i64>,
    /// Per grant id: actions started.
    used: HashMap<String, u32>,
    pub bob_trusted: bool,
    /// Nonces whose command passed signature, device and freshness (and
    /// when it was issued): never again.
    seen: HashMap<String, i64>,
    /// At most the newest `issued` the daemon's replay cache may have
    /// dropped since its start (it refuses what was issued no later as stale).
    forgot_upto: Option<i64>,
    pub running: Vec<Task>,
    pub up: bool,
    pub broken: bool,
    /// The running daemon's start (device wall clock, s).
    not_before: i64,
    /// Starts so far: a command issued in the very second of a start is
    /// stale if it was signed before it (the real milliseconds decide).
    pub epoch: u64,
}

fn deny(codes: &[DenyCode]) -> Expect {
    Expect::Deny(codes.to_vec())
}

impl Model {
    pub fn new() -> Model {
        Model {
            t: 0,
            skew: 0,
            grant: None,
            deadlines: HashMap::new(),
            used: HashMap::new(),
            bob_trusted: false,
            seen: HashMap::new(),
            forgot_upto: None,
            running: Vec::new(),
            up: false,
            broken: false,
            not_before: 0,
            epoch: 0,
        }
    }

    pub fn wall(&self) -> i64 {
        self.t + self.skew
    }

    /// A daemon started (now), with nothing running and no deadline.
    pub fn started(&mut self) {
        self.up = true;
        self.running.clear();
        self.deadlines.clear();
        self.not_before = self.wall();
        self.forgot_upto = None;
        self.epoch += 1;
        self.refresh();
    }

    /// The daemon stopped (cleanly or not).
    pub fn stopped(&mut self) {
        self.up = false;
        self.running.clear();
    }

    /// The grant as the daemon enforces it now: live or not. Fixes its
    /// monotonic deadline at its first live reading, as the daemon does.
    pub fn live(&mut self) -> Option<Grant> {
        let g = self.grant.clone()?;
        let now = self.wall();
        if g.granted > now + CLOCK_SKEW_S || g.expires > now + MAX_GRANT_S || now >= g.expires {
            return None;
        }
        let t = self.t;
        let deadline = *self.deadlines.entry(g.id.clone()).or_insert(t + (g.expires - now));
        (self.t < deadline).then_some(g)
    }

    /// What the daemon's replay cache drops as a command comes in: what was
    /// issued 240 s before the device's clock (an upper bound: every nonce
    /// ever seen counts, whether or not this daemon held it).
    pub fn prune(&mut self) {
        if !self.up {
            return;
        }
        let horizon = self.wall() - 240;
        for &issued in self.seen.values() {
            if issued <= horizon && self.forgot_upto.is_none_or(|f| issued > f) {
                self.forgot_upto = Some(issued);
            }
        }
    }

    /// Whether a command issued at `issued` may be refused as stale for a
    /// nonce the daemon's cache dropped (then the model's decision is one
    /// possible answer, `STALE_COMMAND` the other).
    pub fn may_have_forgotten(&self, issued: i64) -> bool {
        self.forgot_upto.is_some_and(|f| issued <= f)
    }

    /// Re-reads the grant and the trusted operators: what the grant no
    /// longer covers stops, and so does what an operator the owner no
    /// longer trusts started (SECURITY.md: a trust removal ends that
    /// operator's tasks at once). Returns the request ids of the tasks
    /// stopped, each with `true` where the grant still covered it, so the
    /// trust removal is what stopped it (`by: trust_removed`).
    pub fn refresh(&mut self) -> Vec<(String, bool)> {
        if !self.up {
            return Vec::new();
        }
        let live = self.live();
        let trusted = |task: &Task| task.operator == 0 || self.bob_trusted;
        let mut keep = Vec::new();
        let mut stop = Vec::new();
        for task in std::mem::take(&mut self.running) {
            let covered = live.as_ref().is_some_and(|g| g.covers(&task));
            if covered && trusted(&task) {
                keep.push(task);
            } else {
                stop.push((task.request_id, covered));
            }
        }
        self.running = keep;
        stop
    }

    /// The decision on `c`, and its effect on the model.
    pub fn decide(&mut self, c: &Sent, request_id: &str) -> Expect {
        if !self.up {
            return Expect::Undelivered;
        }
        match c.signer {
            Some(Who::Alice) => {}
            Some(Who::Bob) if self.bob_trusted => {}
            _ => return deny(&[DenyCode::UntrustedOperator]),
        }
        if c.bad_signature {
            return deny(&[DenyCode::BadSignature]);
        }
        let before_start = c.issued < self.not_before || (c.issued == self.not_before && c.epoch < self.epoch);
        if (self.wall() - c.issued).abs() > FRESHNESS_S || before_start {
            return deny(&[DenyCode::StaleCommand]);
        }
        if self.seen.contains_key(&c.nonce) {
            let forgotten = if self.may_have_forgotten(c.issued) { Some(DenyCode::StaleCommand) } else { None };
            return Expect::Deny([Some(DenyCode::Replay), forgotten].into_iter().flatten().collect());
        }
        self.seen.insert(c.nonce.clone(), c.issued);
        let (_, tier, slow) = ACTIONS[c.action];
        if c.action == ACTIONS.len() - 1 {
            return deny(&[DenyCode::UnknownAction]);
        }
        let Some(g) = self.live() else { return deny(&[DenyCode::NoConsent]) };
        let operator = if c.signer == Some(Who::Alice) { 0 } else { 1 };
        if g.tier < tier {
            return deny(&[DenyCode::TierInsufficient]);
        }
        if g.operators.as_ref().is_some_and(|o| !o.contains(&operator)) {
            return deny(&[DenyCode::OperatorNotGranted]);
        }
        if g.only.as_ref().is_some_and(|o| !o.contains(&c.action)) {
            return deny(&[DenyCode::ActionNotGranted]);
        }
        let used = self.used.entry(g.id.clone()).or_default();
        if g.max_actions.is_some_and(|max| *used >= max) {
            return deny(&[DenyCode::BudgetExhausted]);
        }
        if self.running.len() >= MAX_TASKS {
            return deny(&[DenyCode::Busy]);
        }
        if self.broken {
            // A budget whose count cannot be read counts as spent.
            return if g.max_actions.is_some() {
                deny(&[DenyCode::AuditUnavailable, DenyCode::BudgetExhausted])
            } else {
                deny(&[DenyCode::AuditUnavailable])
            };
        }
        *used += 1;
        if slow {
            self.running.push(Task { request_id: request_id.into(), action: c.action, operator });
        }
        Expect::Run
    }
}
