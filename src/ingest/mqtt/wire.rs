//! MQTT packets as the node's broker reads and writes them, in either
//! version it speaks (3.1.1 and 5), on rumqttc's codecs: only what a sink
//! broker needs, the same for both.

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::Error as V4Error;
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;

/// The protocol version a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Version {
    V4,
    V5,
}

/// A PUBLISH, whatever the version.
#[derive(Debug)]
pub(super) struct Publish {
    pub topic: String,
    pub qos: u8,
    pub pkid: u16,
    pub dup: bool,
    pub payload: Bytes,
}

/// What the broker reads, whatever the version.
#[derive(Debug)]
pub(super) enum In {
    Connect {
        version: Version,
        keep_alive: u16,
        client_id: String,
        /// User name and password.
        login: Option<(String, String)>,
    },
    Publish(Publish),
    PubRel(u16),
    PingReq,
    Subscribe {
        pkid: u16,
        filters: usize,
    },
    Unsubscribe {
        pkid: u16,
        filters: usize,
    },
    Disconnect,
    /// Acks of messages this broker never sends, and AUTH.
    Ignored,
}

/// What the broker writes.
#[derive(Debug, Clone, Copy)]
pub(super) enum Out {
    ConnAck,
    RefuseVersion,
    RefuseLogin,
    PubAck(u16),
    PubRec(u16),
    PubComp(u16),
    PingResp,
    SubAckFailure { pkid: u16, filters: usize },
    UnsubAck { pkid: u16, filters: usize },
}

#[derive(Debug, thiserror::Error)]
pub(super) enum WireError {
    #[error("{0}")]
    V4(V4Error),
    #[error("{0}")]
    V5(rumqttc::v5::mqttbytes::Error),
    #[error("an MQTT version other than 3.1.1 and 5 (protocol level {0})")]
    Level(u8),
}

/// Reads one packet from `buf`; `Ok(None)` until a whole one is there.
pub(super) fn read(
    version: Option<Version>,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<In>, WireError> {
    // A v5 DISCONNECT may have no body, which the codec refuses.
    if version == Some(Version::V5) && buf.len() >= 2 && buf[0] == 0xE0 && buf[1] == 0 {
        let _ = buf.split_to(2);
        return Ok(Some(In::Disconnect));
    }
    match version {
        None => match connect_level(buf) {
            // Which version: CONNECT's protocol level.
            None => Ok(None),
            Some(4) => read(Some(Version::V4), buf, max),
            Some(5) => read(Some(Version::V5), buf, max),
            Some(l) => Err(WireError::Level(l)),
        },
        Some(Version::V4) => from_v4(v4::Packet::read(buf, max)),
        Some(Version::V5) => {
            let max = u32::try_from(max).unwrap_or(u32::MAX);
            match v5::Packet::read(buf, Some(max)) {
                Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
                Err(e) => Err(WireError::V5(e)),
                Ok(p) => Ok(Some(match p {
                    v5::Packet::Connect(c, _, login) => In::Connect {
                        version: Version::V5,
                        keep_alive: c.keep_alive,
                        client_id: c.client_id,
                        login: login.map(|l| (l.username, l.password)),
                    },
                    v5::Packet::Publish(p) => In::Publish(Publish {
                        topic: String::from_utf8_lossy(&p.topic).into_owned(),
                        qos: p.qos as u8,
                        pkid: p.pkid,
                        dup: p.dup,
                        payload: p.payload,
                    }),
                    v5::Packet::PubRel(r) => In::PubRel(r.pkid),
                    v5::Packet::PingReq(_) => In::PingReq,
                    v5::Packet::Subscribe(s) => In::Subscribe {
                        pkid: s.pkid,
                        filters: s.filters.len(),
                    },
                    v5::Packet::Unsubscribe(u) => In::Unsubscribe {
                        pkid: u.pkid,
                        filters: u.filters.len(),
                    },
                    v5::Packet::Disconnect(_) => In::Disconnect,
                    _ => In::Ignored,
                })),
            }
        }
    }
}

/// The protocol level of the CONNECT at the head of `buf` (`None`: not
/// all there yet); what is not a CONNECT reads as level 4, for the codec
/// to refuse.
fn connect_level(buf: &[u8]) -> Option<u8> {
    if buf.first()? >> 4 != 1 {
        return Some(4);
    }
    // The remaining length: one to four bytes of 7 bits.
    let mut at = 1;
    loop {
        let b = *buf.get(at)?;
        at += 1;
        if b & 0x80 == 0 || at == 5 {
            break;
        }
    }
    let name = u16::from_be_bytes([*buf.get(at)?, *buf.get(at + 1)?]) as usize;
    buf.get(at + 2 + name).copied()
}

fn from_v4(r: Result<v4::Packet, V4Error>) -> Result<Option<In>, WireError> {
    match r {
        Err(V4Error::InsufficientBytes(_)) => Ok(None),
        Err(e) => Err(WireError::V4(e)),
        Ok(p) => Ok(Some(match p {
            v4::Packet::Connect(c) => In::Connect {
                version: Version::V4,
                keep_alive: c.keep_alive,
                client_id: c.client_id,
                login: c.login.map(|l| (l.username, l.password)),
            },
            v4::Packet::Publish(p) => In::Publish(Publish {
                topic: p.topic,
                qos: p.qos as u8,
                pkid: p.pkid,
                dup: p.dup,
                payload: p.payload,
            }),
            v4::Packet::PubRel(r) => In::PubRel(r.pkid),
            v4::Packet::PingReq => In::PingReq,
            v4::Packet::Subscribe(s) => In::Subscribe {
                pkid: s.pkid,
                filters: s.filters.len(),
            },
            v4::Packet::Unsubscribe(u) => In::Unsubscribe {
                pkid: u.pkid,
                filters: u.topics.len(),
            },
            v4::Packet::Disconnect => In::Disconnect,
            _ => In::Ignored,
        })),
    }
}

/// Writes `out` in `version`'s encoding.
pub(super) fn write(version: Version, out: Out, buf: &mut BytesMut) -> Result<(), WireError> {
    match version {
        Version::V4 => {
            let p = match out {
                Out::ConnAck => {
                    v4::Packet::ConnAck(v4::ConnAck::new(v4::ConnectReturnCode::Success, false))
                }
                Out::RefuseVersion => v4::Packet::ConnAck(v4::ConnAck::new(
                    v4::ConnectReturnCode::RefusedProtocolVersion,
                    false,
                )),
                Out::RefuseLogin => v4::Packet::ConnAck(v4::ConnAck::new(
                    v4::ConnectReturnCode::BadUserNamePassword,
                    false,
                )),
                Out::PubAck(id) => v4::Packet::PubAck(v4::PubAck::new(id)),
                Out::PubRec(id) => v4::Packet::PubRec(v4::PubRec::new(id)),
                Out::PubComp(id) => v4::Packet::PubComp(v4::PubComp::new(id)),
                Out::PingResp => v4::Packet::PingResp,
                Out::SubAckFailure { pkid, filters } => v4::Packet::SubAck(v4::SubAck::new(
                    pkid,
                    vec![v4::SubscribeReasonCode::Failure; filters],
                )),
                Out::UnsubAck { pkid, .. } => v4::Packet::UnsubAck(v4::UnsubAck::new(pkid)),
            };
            p.write(buf, usize::MAX).map(|_| ()).map_err(WireError::V4)
        }
        Version::V5 => {
            let connack = |code| {
                v5::Packet::ConnAck(v5::ConnAck {
                    session_present: false,
                    code,
                    properties: None,
                })
            };
            let p = match out {
                Out::ConnAck => connack(v5::ConnectReturnCode::Success),
                Out::RefuseVersion => connack(v5::ConnectReturnCode::UnsupportedProtocolVersion),
                Out::RefuseLogin => connack(v5::ConnectReturnCode::BadUserNamePassword),
                Out::PubAck(id) => v5::Packet::PubAck(v5::PubAck::new(id, None)),
                Out::PubRec(id) => v5::Packet::PubRec(v5::PubRec::new(id, None)),
                Out::PubComp(id) => v5::Packet::PubComp(v5::PubComp::new(id, None)),
                Out::PingResp => v5::Packet::PingResp(v5::PingResp),
                Out::SubAckFailure { pkid, filters } => v5::Packet::SubAck(v5::SubAck {
                    pkid,
                    return_codes: vec![v5::SubscribeReasonCode::ImplementationSpecific; filters],
                    properties: None,
                }),
                Out::UnsubAck { pkid, filters } => v5::Packet::UnsubAck(v5::UnsubAck {
                    pkid,
                    reasons: vec![v5::UnsubAckReason::NoSubscriptionExisted; filters],
                    properties: None,
                }),
            };
            p.write(buf, None).map(|_| ()).map_err(WireError::V5)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_version_from_connect() {
        let mut b = BytesMut::new();
        v4::Packet::Connect(v4::Connect::new("d"))
            .write(&mut b, usize::MAX)
            .unwrap();
        assert!(matches!(
            read(None, &mut b.clone(), 1 << 20),
            Ok(Some(In::Connect {
                version: Version::V4,
                ..
            }))
        ));
        // Cut short: not yet.
        assert!(matches!(
            read(None, &mut b.split_to(b.len() - 1), 1 << 20),
            Ok(None)
        ));
        let mut v3 = BytesMut::from(
            &[
                0x10, 12, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, 2, 0, 60,
            ][..],
        );
        assert!(matches!(
            read(None, &mut v3, 1 << 20),
            Err(WireError::Level(3))
        ));
    }

    proptest::proptest! {
        /// Whatever bytes a device sends, reading them never panics, and
        /// every packet read consumes bytes.
        #[test]
        fn fuzz_wire_read_never_panics(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512),
            version in 0u8..3,
        ) {
            let version = match version {
                0 => None,
                1 => Some(Version::V4),
                _ => Some(Version::V5),
            };
            let mut buf = BytesMut::from(&bytes[..]);
            for _ in 0..64 {
                let before = buf.len();
                match read(version, &mut buf, 1024) {
                    Ok(Some(_)) => proptest::prop_assert!(buf.len() < before),
                    _ => break,
                }
            }
        }
    }

    proptest::proptest! {
        /// Valid packets of both versions with bytes changed or cut.
        #[test]
        fn fuzz_wire_read_of_changed_packets(
            flips in proptest::collection::vec((0usize..400, proptest::num::u8::ANY), 0..6),
            cut in 0usize..400,
            v5 in proptest::bool::ANY,
        ) {
            let mut b = BytesMut::new();
            if v5 {
                v5::Packet::Connect(
                    v5::Connect { keep_alive: 30, client_id: "dev".into(), clean_start: true, properties: None },
                    None,
                    Some(v5::Login::new("u", "p")),
                )
                .write(&mut b, None)
                .unwrap();
                let mut p = v5::Publish::new("a/b", rumqttc::v5::mqttbytes::QoS::AtLeastOnce, vec![b'{'; 100], None);
                p.pkid = 1;
                v5::Packet::Publish(p).write(&mut b, None).unwrap();
            } else {
                v4::Packet::Connect(v4::Connect::new("dev")).write(&mut b, usize::MAX).unwrap();
                let mut p = v4::Publish::new("a/b", rumqttc::mqttbytes::QoS::AtLeastOnce, vec![b'{'; 100]);
                p.pkid = 1;
                v4::Packet::Publish(p).write(&mut b, usize::MAX).unwrap();
            }
            for (i, v) in flips {
                let n = b.len();
                if let Some(x) = b.get_mut(i % n) {
                    *x = v;
                }
            }
            b.truncate(cut.max(1).min(b.len()));
            let mut version = None;
            for _ in 0..8 {
                match read(version, &mut b, 1024) {
                    Ok(Some(In::Connect { version: v, .. })) => version = Some(v),
                    Ok(Some(_)) => {}
                    _ => break,
                }
            }
        }
    }
}
