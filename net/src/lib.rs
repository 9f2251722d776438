//! tarn's overlay network. Today: the framing every tarn protocol message
//! uses, CBOR (ciborium) with an explicit size cap and recursion limit, so
//! a peer's message is bounded before it is decoded. The libp2p swarm, its
//! behaviours and the `Client`/`EventLoop` pair arrive with the mesh.
//!
//! - [`codec`]: bounded CBOR encoding and decoding
//!
//! ```
//! use tarn_net::codec;
//! let bytes = codec::encode(&("hello", 42u32), 1024)?;
//! let (s, n): (String, u32) = codec::decode(&bytes, 1024)?;
//! assert_eq!((s.as_str(), n), ("hello", 42));
//! assert!(codec::decode::<(String, u32)>(&bytes, 4).is_err());
//! # Ok::<(), codec::CodecError>(())
//! ```

pub mod codec;
