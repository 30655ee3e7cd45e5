//! `[[assert]]`: what the file's own rules must decide for given packets and connections,
//! written next to the rules (`{ in = "tcp 22", from = "10.0.0.5", expect = "allow" }`). They
//! are read here; they are checked against the rules (which needs the host, for `program` and
//! `unit`) by `crate::explain::check_assertions`, whenever the file is loaded: `fwctl check`
//! fails and a reload is refused while one does not hold, so a policy can state its own
//! invariants ("SSH from the admin network stays open", "nothing but the mail server sends on
//! port 25") and no later edit can break them unnoticed.

use std::ops::Range;

use serde::Deserialize;
use toml::{Spanned, de::DeValue};

use super::{
    checker::Checker,
    raw::{ProgramPath, RawUser, UnitName},
    values::{parse_decimal, parse_net, port_number},
};
use crate::model::{Action, Assertion, Direction, Origin, PacketProto, Probe, ProbeError, Proto};

/// `[[assert]]`: a statement about what the rules decide. Exactly one of `in` and `out`, and
/// `expect`, are required.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAssert {
    /// An inbound packet: `"tcp PORT"`, `"udp PORT"` (the local port, a number or a service
    /// name) or `"icmp"` (an echo request).
    #[serde(rename = "in")]
    pub(super) inbound: Option<Spanned<String>>,
    /// An outbound connection: `"tcp PORT"` or `"udp PORT"` (the destination port).
    #[serde(rename = "out")]
    pub(super) outbound: Option<Spanned<String>>,
    /// With `in`: the source, an address or a network (every address of it must get
    /// `expect`). Absent: every address, IPv4 and IPv6.
    pub(super) from: Option<Spanned<String>>,
    /// With `out`: the destination, an address or a network. Absent: every address.
    pub(super) to: Option<Spanned<String>>,
    /// The socket's program: the listening one's with `in`, the caller's with `out`.
    pub(super) program: Option<Spanned<ProgramPath>>,
    /// The socket owner's systemd unit.
    pub(super) unit: Option<Spanned<UnitName>>,
    /// The socket owner's user (a name or a uid).
    pub(super) user: Option<Spanned<RawUser>>,
    /// `"allow"` | `"reject"` | `"stealth"`: what the rules must decide.
    pub(super) expect: Option<Spanned<String>>,
}

impl Checker<'_> {
    pub(super) fn assertions(&mut self, value: Option<Spanned<DeValue<'_>>>) -> Vec<Assertion> {
        let Some(value) = value else {
            return Vec::new();
        };
        let span = value.span();
        let DeValue::Array(elements) = value.into_inner() else {
            self.error(
                Some(span),
                "assertions are written [[assert]] (double brackets: one table per assertion)"
                    .to_owned(),
            );
            return Vec::new();
        };
        let mut out = Vec::with_capacity(elements.len());
        for (i, element) in elements.into_iter().enumerate() {
            let header = element.span();
            let ctx = format!("assert {}: ", i + 1);
            let Some(raw) = self.table::<RawAssert>(element, &ctx, "[[assert]]", "", &[]) else {
                continue;
            };
            if let Some(a) = self.assertion(raw, &ctx, header) {
                out.push(a);
            }
        }
        out
    }

    fn assertion(&mut self, raw: RawAssert, ctx: &str, header: Range<usize>) -> Option<Assertion> {
        let (direction, spec, remote, remote_key) = match (&raw.inbound, &raw.outbound) {
            (Some(spec), None) => (Direction::In, spec, &raw.from, "from"),
            (None, Some(spec)) => (Direction::Out, spec, &raw.to, "to"),
            (Some(_), Some(o)) => {
                self.error(
                    Some(o.span()),
                    format!("{ctx}give either `in` or `out`, not both"),
                );
                return None;
            }
            (None, None) => {
                self.error(
                    Some(header),
                    format!(
                        r#"{ctx}missing `in` or `out`: what is asserted, such as in = "tcp 22" or out = "tcp 25""#
                    ),
                );
                return None;
            }
        };
        let wrong_side = match direction {
            Direction::In => raw.to.as_ref().map(|v| (v.span(), "to", "from")),
            Direction::Out => raw.from.as_ref().map(|v| (v.span(), "from", "to")),
        };
        let mut ok = true;
        if let Some((span, key, right)) = wrong_side {
            self.error(
                Some(span),
                format!(
                    "{ctx}`{key}` does not go with `{direction}`; the remote address is `{right}`"
                ),
            );
            ok = false;
        }
        let probe = self.probe_spec(spec, direction, ctx);
        let remote = match remote {
            None => Some(None),
            Some(v) => match parse_net(v.get_ref()) {
                Ok(net) => Some(Some(net.trunc())),
                Err(e) => {
                    self.error(Some(v.span()), format!("{ctx}{remote_key}: {e}"));
                    None
                }
            },
        };
        let expect = match &raw.expect {
            Some(v) => self.choice(
                v,
                ctx,
                "expect",
                &[
                    ("allow", Action::Allow),
                    ("reject", Action::Reject),
                    ("stealth", Action::Stealth),
                ],
            ),
            None => {
                self.error(
                    Some(header.clone()),
                    format!(r#"{ctx}missing `expect`: "allow", "reject" or "stealth""#),
                );
                None
            }
        };
        let owner = self.selector(
            raw.program.as_ref(),
            raw.unit.as_ref(),
            raw.user.as_ref(),
            ctx,
        );
        // Checked even when other keys are broken, so one run reports every problem.
        let probe = probe.and_then(|(proto, port)| {
            let who = owner.clone().unwrap_or_default();
            match Probe::new(direction, proto, port, who) {
                Ok(probe) => Some(probe),
                Err(e) => {
                    let why = match e {
                        ProbeError::OutboundIcmp => format!(
                            "{direction}: outbound ICMP is not judged by the rules (outbound \
                             rules are about TCP and UDP sockets)"
                        ),
                        ProbeError::IcmpOwner => "ICMP has no socket owner: `program`, `unit` \
                                                  and `user` do not go with icmp"
                            .to_owned(),
                        ProbeError::Proto | ProbeError::Port => format!(
                            "{direction}: not a packet to assert about; expected \"tcp PORT\", \
                             \"udp PORT\" or (inbound) \"icmp\""
                        ),
                    };
                    self.error(Some(spec.span()), format!("{ctx}{why}"));
                    None
                }
            }
        });
        let (Some(probe), Some(remote), Some(expect), Some(_), true) =
            (probe, remote, expect, owner, ok)
        else {
            return None;
        };
        let (line, column) = self.locate(header.start);
        Some(Assertion {
            probe,
            remote,
            expect,
            origin: Origin {
                line,
                column,
                file: self.file,
            },
        })
    }

    /// `"tcp 22"`, `"udp domain"`, `"icmp"` (inbound only).
    fn probe_spec(
        &mut self,
        spec: &Spanned<String>,
        direction: Direction,
        ctx: &str,
    ) -> Option<(PacketProto, u16)> {
        let text = spec.get_ref().trim();
        let mut words = text.split_whitespace();
        let (proto, port) = (words.next(), words.next());
        let extra = words.next();
        let expected = r#"expected "tcp PORT", "udp PORT" or (inbound) "icmp""#;
        let result = match (proto, port, extra) {
            // Whether ICMP may be asserted in this direction is [`Probe::new`]'s to say.
            (Some("icmp"), None, None) => Ok((PacketProto::Icmp, 0)),
            (Some(p @ ("tcp" | "udp")), Some(port), None) => {
                let (packet, rule) = if p == "tcp" {
                    (PacketProto::Tcp, Proto::Tcp)
                } else {
                    (PacketProto::Udp, Proto::Udp)
                };
                let number = if port.bytes().all(|b| b.is_ascii_digit()) {
                    port_number(parse_decimal(port))
                } else {
                    self.service(port, rule)
                };
                number.map(|n| (packet, n))
            }
            _ => Err(format!(
                "{text:?} is not a packet to assert about; {expected}"
            )),
        };
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                self.error(Some(spec.span()), format!("{ctx}{direction}: {e}"));
                None
            }
        }
    }
}
