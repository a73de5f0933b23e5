//! The control protocol between the VMM and a vCPU thread: the requests sent on its channel
//! (pause, resume, stop, save its state), the answers, and the state machine that decides what
//! a request does to a thread in a given run state. The thread side is in vcpu.rs.

use std::time::Duration;

use crate::vstate::vcpu_state::VcpuState;

/// A request from the VMM to a vCPU thread, sent over its channel before the kick signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VcpuRequest {
    /// Leave KVM_RUN and park until `Resume` (answered with `VcpuAck::Paused`).
    Pause,
    /// Continue running (answered with `VcpuAck::Resumed`).
    Resume,
    /// Wake up a parked thread so that it sees the stop flag.
    Stop,
    /// Answer the whole vCPU state (`VcpuAck::State`); only while paused.
    SaveState,
}

/// A vCPU thread's answer to a `VcpuRequest`.
#[derive(Debug)]
pub enum VcpuAck {
    /// The thread is out of KVM_RUN and parked.
    Paused,
    /// The thread is back in its run loop.
    Resumed,
    /// The state asked for with `SaveState` (or why it could not be read).
    State(Box<Result<VcpuState, String>>),
}

impl VcpuAck {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            VcpuAck::Paused => "paused",
            VcpuAck::Resumed => "resumed",
            VcpuAck::State(_) => "its state",
        }
    }
}

/// Why a pause or resume did not complete.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VcpuControlError {
    /// The thread did not answer in time: a deadlock or a vCPU stuck in the host kernel.
    #[error("vCPU {index} did not acknowledge {what} within {timeout_ms} ms")]
    Timeout {
        /// vCPU index.
        index: u8,
        /// "pause" or "resume".
        what: &'static str,
        /// How long the VMM waited.
        timeout_ms: u128,
    },
    /// The thread has already ended (the guest is shutting down).
    #[error("vCPU {0} has exited")]
    Exited(u8),
    /// The thread answered something else than expected.
    #[error("vCPU {index} answered {got}")]
    Unexpected {
        /// vCPU index.
        index: u8,
        /// The answer.
        got: &'static str,
    },
    /// The thread could not read its state.
    #[error("vCPU {index}: {reason}")]
    SaveState {
        /// vCPU index.
        index: u8,
        /// Why.
        reason: String,
    },
}

/// What a request asks of the thread in `state`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Move to this state; answer it (`Paused` or `Resumed`) when the flag says so.
    Go(RunState, bool),
    /// Read and answer the vCPU state, staying paused.
    SaveState,
    /// Refuse: answer why.
    Refuse(&'static str),
}

/// What `request` does to a thread in `state`.
pub(crate) fn transition(request: VcpuRequest, state: RunState) -> Action {
    match request {
        VcpuRequest::Pause => Action::Go(RunState::Paused, true),
        VcpuRequest::Resume => Action::Go(RunState::Running, true),
        VcpuRequest::Stop => Action::Go(RunState::Exited, false),
        VcpuRequest::SaveState if state == RunState::Paused => Action::SaveState,
        VcpuRequest::SaveState => Action::Refuse("the vCPU is not paused"),
    }
}

/// How often a parked vCPU thread re-checks its stop flag.
pub(crate) const PARK_POLL: Duration = Duration::from_millis(500);

/// The run state of a vCPU thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RunState {
    /// Running guest code (in or around KVM_RUN).
    Running,
    /// Out of KVM_RUN, parked on the request channel.
    Paused,
    /// Done: the thread returns its exit reason.
    Exited,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(action: Action) -> Option<(RunState, bool)> {
        match action {
            Action::Go(next, ack) => Some((next, ack)),
            _ => None,
        }
    }

    #[test]
    fn test_transition_pause_parks_and_acks() {
        assert_eq!(
            target(transition(VcpuRequest::Pause, RunState::Running)),
            Some((RunState::Paused, true))
        );
    }

    #[test]
    fn test_transition_resume_runs_and_acks() {
        assert_eq!(
            target(transition(VcpuRequest::Resume, RunState::Paused)),
            Some((RunState::Running, true))
        );
    }

    #[test]
    fn test_transition_stop_exits_without_ack() {
        assert_eq!(
            target(transition(VcpuRequest::Stop, RunState::Paused)),
            Some((RunState::Exited, false))
        );
    }

    #[test]
    fn test_transition_save_state_only_while_paused() {
        assert_eq!(
            transition(VcpuRequest::SaveState, RunState::Paused),
            Action::SaveState
        );
        assert!(matches!(
            transition(VcpuRequest::SaveState, RunState::Running),
            Action::Refuse(_)
        ));
    }
}
