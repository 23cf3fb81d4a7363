//! Token usage, read from responses as they pass: from the JSON body of a
//! whole response, or from server-sent events line by line while a stream
//! goes through (never buffering more than one event line).

use serde_json::Value;

use super::config::WireFormat;

/// Longest SSE line the tap will hold while waiting for its end; longer
/// lines are passed through but not inspected.
const MAX_LINE: usize = 1024 * 1024;

/// Tokens counted so far.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Prompt (input) tokens.
    pub input: u64,
    /// Completion (output) tokens.
    pub output: u64,
}

/// Reads usage from a complete JSON response body.
pub fn from_body(format: WireFormat, body: &[u8]) -> Usage {
    let Ok(json) = serde_json::from_slice::<Value>(body) else {
        return Usage::default();
    };
    let mut usage = Usage::default();
    apply(format, &json, &mut usage);
    usage
}

/// Largest token count believed from a provider; anything above is
/// clamped (a tenant's own provider could report absurd numbers to
/// overflow the accounting).
const MAX_TOKENS: u64 = 1 << 40;

fn number(v: &Value, key: &str) -> Option<u64> {
    v.get(key)
        .and_then(Value::as_u64)
        .map(|n| n.min(MAX_TOKENS))
}

/// Folds the usage found in one JSON object (a body or an event) into
/// `usage`.
fn apply(format: WireFormat, json: &Value, usage: &mut Usage) {
    match format {
        WireFormat::OpenAi => {
            if let Some(u) = json.get("usage").filter(|u| u.is_object()) {
                usage.input = number(u, "prompt_tokens").unwrap_or(usage.input);
                usage.output = number(u, "completion_tokens").unwrap_or(usage.output);
            }
        }
        WireFormat::Anthropic => {
            // `message_start` carries the input count under `message`;
            // `message_delta` the running output count; a whole response
            // has both at the top level.
            for u in [
                json.get("usage"),
                json.get("message").and_then(|m| m.get("usage")),
            ]
            .into_iter()
            .flatten()
            {
                usage.input = number(u, "input_tokens").unwrap_or(usage.input);
                usage.output = number(u, "output_tokens").unwrap_or(usage.output);
            }
        }
    }
}

/// Watches a server-sent event stream go by.
pub struct StreamTap {
    format: WireFormat,
    line: Vec<u8>,
    overflow: bool,
    /// What has been counted.
    pub usage: Usage,
}

impl StreamTap {
    /// A tap for `format`.
    pub fn new(format: WireFormat) -> Self {
        Self {
            format,
            line: Vec::new(),
            overflow: false,
            usage: Usage::default(),
        }
    }

    /// Inspects the next chunk of the stream.
    pub fn feed(&mut self, chunk: &[u8]) {
        for &byte in chunk {
            if byte == b'\n' {
                if !self.overflow {
                    self.finish_line();
                }
                self.line.clear();
                self.overflow = false;
            } else if self.line.len() < MAX_LINE {
                self.line.push(byte);
            } else {
                self.overflow = true;
            }
        }
    }

    fn finish_line(&mut self) {
        let line = self.line.strip_suffix(b"\r").unwrap_or(&self.line);
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        if let Ok(json) = serde_json::from_slice::<Value>(data.trim_ascii()) {
            apply(self.format, &json, &mut self.usage);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_usage_is_read_from_bodies_and_the_final_stream_chunk() {
        let body = br#"{"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":5}}"#;
        assert_eq!(
            from_body(WireFormat::OpenAi, body),
            Usage {
                input: 12,
                output: 5
            }
        );
        let mut tap = StreamTap::new(WireFormat::OpenAi);
        let stream = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n\
                      data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3}}\n\n\
                      data: [DONE]\n\n";
        // Split at awkward places: the tap must join lines across chunks.
        for piece in stream.as_bytes().chunks(5) {
            tap.feed(piece);
        }
        assert_eq!(
            tap.usage,
            Usage {
                input: 7,
                output: 3
            }
        );
    }

    #[test]
    fn anthropic_usage_is_read_from_start_and_delta_events() {
        let mut tap = StreamTap::new(WireFormat::Anthropic);
        tap.feed(b"event: message_start\r\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":20,\"output_tokens\":1}}}\r\n\r\n");
        tap.feed(b"event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":9}}\n\n");
        assert_eq!(
            tap.usage,
            Usage {
                input: 20,
                output: 9
            }
        );
        let body = br#"{"type":"message","usage":{"input_tokens":4,"output_tokens":2}}"#;
        assert_eq!(
            from_body(WireFormat::Anthropic, body),
            Usage {
                input: 4,
                output: 2
            }
        );
    }

    #[test]
    fn garbage_and_giant_lines_are_passed_over() {
        let mut tap = StreamTap::new(WireFormat::OpenAi);
        tap.feed(b"data: {not json\n");
        tap.feed(&vec![b'x'; MAX_LINE + 10]);
        tap.feed(b"\ndata: {\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n");
        assert_eq!(
            tap.usage,
            Usage {
                input: 1,
                output: 1
            }
        );
        assert_eq!(from_body(WireFormat::OpenAi, b"\xff\xfe"), Usage::default());
    }
}
