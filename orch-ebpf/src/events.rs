//! Drop and trace events to user space (the agent's monitor), through a
//! ring buffer, at most `EVENTS_PER_SECOND` per CPU. Types and map names:
//! `orch_ebpf_common::events`.

use aya_ebpf::{
    btf_maps::{Array, PerCpuArray, RingBuf},
    helpers::bpf_ktime_get_ns,
    macros::btf_map,
};
use orch_ebpf_common::events::{
    DataplaneEvent, EVENT_DROP, EVENT_TRACE, EVENTS_BYTES, EVENTS_PER_SECOND, EventRate,
    MonitorConfig,
};

#[btf_map]
static EVENTS: RingBuf<DataplaneEvent, EVENTS_BYTES> = RingBuf::new();

#[btf_map]
static MONITOR_CONFIG: Array<MonitorConfig, 1> = Array::new();

#[btf_map]
static EVENT_RATE: PerCpuArray<EventRate, 1> = PerCpuArray::new();

/// What an event is about: the packet's (or socket's) flow, and where it
/// was sent when translated; `emit` fills in the time, kind and reason.
pub type Subject = DataplaneEvent;

/// Reports a drop (always, within the rate).
#[inline(always)]
pub fn drop(reason: u8, subject: &Subject) {
    emit(EVENT_DROP, reason, subject);
}

/// Reports what was done with a packet, while a monitor asks for traces
/// (the subject is read only then).
#[inline(always)]
pub fn trace(reason: u8, subject: impl FnOnce() -> Subject) {
    let wanted = MONITOR_CONFIG.get(0).is_some_and(|c| c.traces != 0);
    if wanted {
        emit(EVENT_TRACE, reason, &subject());
    }
}

#[inline(always)]
fn emit(kind: u8, reason: u8, subject: &Subject) {
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if !take_token(now) {
        return;
    }
    let event = DataplaneEvent {
        timestamp: now,
        kind,
        reason,
        ..*subject
    };
    // Full: the event is lost (user space reads too slowly), never the
    // packet.
    let _ = EVENTS.output(event, 0);
}

/// A token bucket per CPU: `EVENTS_PER_SECOND` tokens a second, as many
/// at most.
#[inline(always)]
fn take_token(now: u64) -> bool {
    let Some(rate) = EVENT_RATE.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: a per-CPU value; tc and sock_addr programs are not preempted
    // on their CPU, so nothing else writes it meanwhile.
    unsafe {
        let elapsed = now.saturating_sub((*rate).refilled);
        let earned = elapsed / (1_000_000_000 / EVENTS_PER_SECOND);
        if earned > 0 {
            (*rate).tokens = ((*rate).tokens + earned).min(EVENTS_PER_SECOND);
            (*rate).refilled = now;
        }
        if (*rate).tokens == 0 {
            return false;
        }
        (*rate).tokens -= 1;
    }
    true
}
