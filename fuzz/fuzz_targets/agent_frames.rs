//! Fuzzes the host side of the agent protocol: bytes from the (hostile) guest agent, split
//! into reads at fuzzer-chosen points, through `FrameDecoder<AgentMessage>`. It must never
//! panic, and a decoder that reported an error is not used again (as the session does).
//!
//! Input: byte 0 is the read size (1..=256); the rest is the stream.

#![no_main]

use hvlite::agent::protocol::{AgentMessage, FrameDecoder, HostMessage, Message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk) + 1;
    let mut decoder = FrameDecoder::<AgentMessage>::new();
    'feed: for piece in stream.chunks(chunk) {
        decoder.push(piece);
        loop {
            match decoder.next_message() {
                Ok(Some(msg)) => {
                    // What was decoded encodes again and decodes to the same message.
                    let mut again = FrameDecoder::<AgentMessage>::new();
                    again.push(&msg.encode());
                    assert_eq!(again.next_message().ok().flatten(), Some(msg));
                }
                Ok(None) => break,
                Err(_) => break 'feed,
            }
        }
    }
    // The agent's side decodes host messages with the same framing.
    let mut host = FrameDecoder::<HostMessage>::new();
    host.push(stream);
    while let Ok(Some(_)) = host.next_message() {}
});
