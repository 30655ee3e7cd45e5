//! Inbound: what the XDP program does with a parsed frame.
//!
//! In order: frames that are not judged (not IP, ICMP that IPv6 and path MTU discovery need,
//! later fragments by `FRAGMENTS`) pass or drop at once; then the connection table decides
//! the packets of known flows (`conntrack.rs`); what is left is classified by the rules
//! (`classifier.rs`, and `selector.rs` for rules about programs, judged by who listens on the
//! port), a flow the rules allow is recorded, the decision is logged if it is a logged one
//! (`decision_log.rs`), and the verdict's action is carried out: pass, drop, or answer
//! ([`reject`], with the builders and budgets of `reply.rs`).

use aya_ebpf::{
    Global,
    bindings::xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    programs::XdpContext,
};
use firewall_common::{
    ACTION_ALLOW, ACTION_REJECT, ACTION_STEALTH, Counter, DEFAULT_RULE, FRAG_STEALTH, NO_MATCH,
    PROTO_TCP, PROTO_UDP, TCP_RST, WHY_DEFAULT, WHY_INVALID, WHY_RECHECK, WHY_RULE, verdict,
    verdict_action,
};

use crate::{
    addr::AddrWords,
    classifier::{self, count_rule_hit, min},
    clock, conntrack,
    counters::count,
    decision_log, diagnostics, dns,
    parse::{L2, Packet, Parsed},
    reply, selector,
};

/// `[defaults] fragments`: `FRAG_ALLOW` or `FRAG_STEALTH`, for non-first fragments. A
/// load-time constant, set per generation.
#[unsafe(no_mangle)]
static FRAGMENTS: Global<u32> = Global::new(0);

/// The XDP program's verdict on a parsed frame (or the reason it could not be parsed).
#[inline(always)]
pub(crate) fn inbound(ctx: &XdpContext, parsed: Result<Parsed, Counter>) -> u32 {
    match parsed {
        Ok(Parsed::NonIp) => {
            count(Counter::PassNonIp);
            XDP_PASS
        }
        Ok(Parsed::IcmpEssential) => {
            count(Counter::PassIcmpEssential);
            XDP_PASS
        }
        Ok(Parsed::LaterFragment) => {
            if FRAGMENTS.load() == FRAG_STEALTH {
                count(Counter::DropFragment);
                XDP_DROP
            } else {
                count(Counter::PassFragment);
                XDP_PASS
            }
        }
        Ok(Parsed::Packet(pkt)) => {
            let now = clock::now();
            let seen = conntrack::inbound(ctx, &pkt, now);
            if diagnostics::on() {
                diagnostics::conntrack(seen.code());
            }
            let (word, why) = match seen {
                conntrack::Inbound::Tracked => {
                    count(Counter::PassTracked);
                    dns::answer_arrives(ctx, &pkt, now);
                    return XDP_PASS;
                }
                conntrack::Inbound::Related => {
                    count(Counter::PassRelated);
                    return XDP_PASS;
                }
                conntrack::Inbound::Invalid => {
                    count(Counter::DropCtInvalid);
                    return XDP_DROP;
                }
                conntrack::Inbound::Denied(word) => (word, WHY_RECHECK),
                conntrack::Inbound::NoConnection => {
                    count(Counter::CtInvalidNoConn);
                    let word = conntrack::config()
                        .map(|c| c.invalid_verdict)
                        .unwrap_or(verdict(DEFAULT_RULE, ACTION_STEALTH));
                    (word, WHY_INVALID)
                }
                conntrack::Inbound::Unknown => judge(ctx, &pkt, now),
            };
            decision_log::inbound(ctx, &pkt, word, why, now);
            let action = act(ctx, &pkt, word);
            if verdict_action(word) == ACTION_ALLOW {
                dns::answer_arrives(ctx, &pkt, now);
            }
            action
        }
        Err(reason) => {
            if diagnostics::on() {
                diagnostics::dropped(reason as u32);
            }
            count(reason);
            XDP_DROP
        }
    }
}

/// A packet the connection table does not know: the rules (or the default) decide, and a
/// flow they allow is recorded. Returns the verdict word and why (`WHY_RULE`, `WHY_DEFAULT`).
#[inline(always)]
fn judge(ctx: &XdpContext, pkt: &Packet, now: u64) -> (u32, u32) {
    let mut word = classifier::classify(pkt);
    if selector::active() {
        // Scalars only: a pointer argument would force the packet onto this frame's stack.
        let r = AddrWords::of(&pkt.remote);
        let l = AddrWords::of(&pkt.local);
        let meta = (u64::from(r.v4) << 32)
            | (u64::from(pkt.proto & 0xff) << 16)
            | u64::from(pkt.local_port);
        word = min(
            word,
            selector::classify_inbound(r.hi, r.lo, meta, l.hi, l.lo),
        );
    }
    let why = if word == NO_MATCH {
        word = classifier::DEFAULT_INBOUND.load();
        count(Counter::DefaultVerdict);
        WHY_DEFAULT
    } else {
        count_rule_hit(word);
        WHY_RULE
    };
    trace_verdict(pkt, word);
    if verdict_action(word) == ACTION_ALLOW {
        conntrack::admit(ctx, pkt, word, now);
    }
    (word, why)
}

/// The rules' verdict on a packet, as a trace message (`diagnostics`).
#[inline(always)]
fn trace_verdict(pkt: &Packet, word: u32) {
    if !diagnostics::on() {
        return;
    }
    let r = AddrWords::of(&pkt.remote);
    let port = u32::from(pkt.local_port);
    if r.v4 {
        diagnostics::verdict4(r.hi as u32, pkt.proto, port, word);
    } else {
        diagnostics::verdict6(r.hi, r.lo, pkt.proto, port, word);
    }
}

/// Carries out a verdict word's action.
#[inline(always)]
fn act(ctx: &XdpContext, pkt: &Packet, word: u32) -> u32 {
    match verdict_action(word) {
        ACTION_ALLOW => {
            count(Counter::Allowed);
            XDP_PASS
        }
        ACTION_REJECT => {
            count(Counter::Rejected);
            reject(ctx, pkt)
        }
        _ => {
            count(Counter::Stealthed);
            XDP_DROP
        }
    }
}

// Here rather than in reply.rs, beside the builders it calls: placed in another module, this
// inlined function made LLVM lay out the blocks of `judge` and `act` differently (same size,
// other order) and the Ethernet XDP program took 238 more verified instructions (165,304 ->
// 165,542 on Linux 6.18). Presumably the functions' order in the LLVM module follows their
// module, and inlining and block placement follow that order.

/// Answers the way a closed port does, or degrades to a silent drop (counted) where no answer
/// is defined, the frame was not for this host, or a reply budget is used up.
#[inline(always)]
fn reject(ctx: &XdpContext, pkt: &Packet) -> u32 {
    // No link-layer header, so no reply: after XDP_TX, generic XDP (the only mode these
    // devices attach in) re-derives skb->protocol from the first 14 bytes as if they were an
    // Ethernet header, and wireguard and the ip tunnels drop a packet whose protocol does not
    // match its IP version (kernel source, bpf_prog_run_generic_xdp; not measured here). One
    // behaviour for every such device: a silent drop, counted.
    if pkt.l2 == L2::None {
        count(Counter::RejectNoLinkLayer);
        return XDP_DROP;
    }
    let answerable = match pkt.proto {
        // Never answer a RST (RFC 9293 3.10.7.1).
        PROTO_TCP => pkt.tcp_flags & TCP_RST == 0,
        PROTO_UDP => true,
        // ICMP errors are never sent about ICMP (RFC 1122 3.2.2); other protocols are dropped.
        _ => false,
    };
    if !answerable || !reply::answerable(pkt) {
        count(Counter::RejectNoReply);
        return XDP_DROP;
    }
    let Some(mac) = reply::our_mac(ctx, pkt) else {
        count(Counter::RejectNotForUs);
        return XDP_DROP;
    };
    let now = clock::now();
    if !reply::take_source_token(&pkt.remote, now) {
        count(Counter::RejectRateLimited);
        return XDP_DROP;
    }
    if !reply::take_global_token(now) {
        count(Counter::RejectGlobalRateLimited);
        return XDP_DROP;
    }
    let built = if pkt.proto == PROTO_TCP {
        reply::tcp_rst(ctx, pkt, mac).map(|()| Counter::RejectTcpRst)
    } else {
        reply::port_unreachable(ctx, pkt, mac).map(|()| Counter::RejectIcmpUnreachable)
    };
    match built {
        Ok(counter) => {
            count(counter);
            XDP_TX
        }
        Err(()) => {
            count(Counter::RejectBuildFailed);
            XDP_DROP
        }
    }
}
