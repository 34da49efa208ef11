//! Conversations and Gemma 3's chat format: `<bos>`, a system message folded into the first user
//! turn, `<start_of_turn>{user|model}\n…<end_of_turn>\n` alternating from user (other orders are
//! refused, as the template refuses them), text trimmed, each image expanded to
//! `\n\n<start_of_image>` + N × `<image_soft_token>` + `<end_of_image>\n\n` as Gemma3Processor
//! does. Also the spans of the text a model is trained on (the assistant turns). Not tokenization.

use serde::Deserialize;

/// One dataset row: `{"messages": [...]}`.
#[derive(Clone, Debug, Deserialize)]
pub struct Conversation {
    /// The turns, in order.
    pub messages: Vec<Message>,
}

/// One turn.
#[derive(Clone, Debug, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant` (`model` is accepted for `assistant`).
    pub role: String,
    /// A plain string or a list of parts.
    pub content: Content,
}

/// A turn's content.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Text and image parts, in order.
    Parts(Vec<Part>),
}

/// A part of a turn.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Part {
    /// Text.
    Text {
        /// The text.
        text: String,
    },
    /// An image file, by path (relative to the dataset file) under `path`, `image` or `url` (the
    /// keys HF's processors read; remote URLs are refused when the row is encoded).
    Image {
        /// The file.
        #[serde(alias = "image", alias = "url")]
        path: String,
    },
}

/// A conversation rendered to text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendered {
    /// The prompt text, images expanded.
    pub text: String,
    /// The image paths, in order of appearance.
    pub images: Vec<String>,
    /// Byte spans `[start, end)` of the assistant turns' text (after `<start_of_turn>model\n`,
    /// through `<end_of_turn>\n`): what a model trained on responses only learns.
    pub response_spans: Vec<(usize, usize)>,
}

/// The special strings of the format.
pub const BOS: &str = "<bos>";
/// Starts a turn.
pub const START_OF_TURN: &str = "<start_of_turn>";
/// Ends a turn.
pub const END_OF_TURN: &str = "<end_of_turn>";

/// The text an image becomes: `\n\n<start_of_image>` + `tokens` × `<image_soft_token>` +
/// `<end_of_image>\n\n`.
pub fn image_block(tokens: usize) -> String {
    format!("\n\n<start_of_image>{}<end_of_image>\n\n", "<image_soft_token>".repeat(tokens))
}

/// Renders `conv` in Gemma 3's chat format with each image expanded to `image_tokens` soft
/// tokens; `add_generation_prompt` appends `<start_of_turn>model\n`. Errors name the turn.
pub fn render(conv: &Conversation, image_tokens: usize, add_generation_prompt: bool) -> Result<Rendered, String> {
    let mut text = String::from(BOS);
    let mut images = Vec::new();
    let mut response_spans = Vec::new();
    let (prefix, turns) = match conv.messages.first() {
        Some(m) if m.role == "system" => {
            let first = match &m.content {
                Content::Text(t) => t.clone(),
                Content::Parts(parts) => match parts.first() {
                    Some(Part::Text { text }) => text.clone(),
                    _ => return Err("the system message must start with text".into()),
                },
            };
            (format!("{first}\n\n"), &conv.messages[1..])
        }
        _ => (String::new(), &conv.messages[..]),
    };
    if turns.is_empty() {
        return Err("no user or assistant turn".into());
    }
    for (i, m) in turns.iter().enumerate() {
        let role = match m.role.as_str() {
            "user" => "user",
            "assistant" | "model" => "model",
            "system" => return Err(format!("turn {i}: a system message is only allowed first")),
            other => return Err(format!("turn {i}: unknown role {other:?} (expected system, user or assistant)")),
        };
        // Gemma 3's chat template raises on anything else.
        if (role == "user") != (i % 2 == 0) {
            return Err(format!(
                "turn {i}: a {} turn where a {} turn is due: after an optional system message, turns must \
                 alternate user, assistant, user, … starting with user",
                m.role,
                if i % 2 == 0 { "user" } else { "assistant" }
            ));
        }
        text.push_str(START_OF_TURN);
        text.push_str(role);
        text.push('\n');
        if i == 0 {
            text.push_str(&prefix);
        }
        let start = text.len();
        match &m.content {
            Content::Text(t) => text.push_str(t.trim()),
            Content::Parts(parts) => {
                for p in parts {
                    match p {
                        Part::Text { text: t } => text.push_str(t.trim()),
                        Part::Image { path } => {
                            if role == "model" {
                                return Err(format!("turn {i}: images are only allowed in user turns"));
                            }
                            text.push_str(&image_block(image_tokens));
                            images.push(path.clone());
                        }
                    }
                }
            }
        }
        text.push_str(END_OF_TURN);
        text.push('\n');
        if role == "model" {
            response_spans.push((start, text.len()));
        }
    }
    if add_generation_prompt {
        text.push_str("<start_of_turn>model\n");
    }
    Ok(Rendered { text, images, response_spans })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(json: &str) -> Conversation {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn system_is_folded_and_assistant_becomes_model() {
        let c = conv(
            r#"{"messages":[{"role":"system","content":"Be brief."},
                {"role":"user","content":[{"type":"image","path":"a.png"},{"type":"text","text":" Hi "}]},
                {"role":"assistant","content":"Yes."}]}"#,
        );
        let r = render(&c, 2, false).unwrap();
        let want = "<bos><start_of_turn>user\nBe brief.\n\n\n\n<start_of_image><image_soft_token><image_soft_token>\
                    <end_of_image>\n\nHi<end_of_turn>\n<start_of_turn>model\nYes.<end_of_turn>\n";
        assert_eq!(r.text, want);
        assert_eq!(r.images, vec!["a.png".to_string()]);
        assert_eq!(&r.text[r.response_spans[0].0..r.response_spans[0].1], "Yes.<end_of_turn>\n");
    }

    #[test]
    fn bad_roles_and_placements_are_errors() {
        assert!(render(&conv(r#"{"messages":[{"role":"bot","content":"x"}]}"#), 1, false).unwrap_err().contains("bot"));
        let img_in_answer = r#"{"messages":[{"role":"assistant","content":[{"type":"image","path":"a"}]}]}"#;
        assert!(render(&conv(img_in_answer), 1, false).is_err());
        assert!(render(&conv(r#"{"messages":[]}"#), 1, false).is_err());
        // Roles must alternate from user, as Gemma 3's template requires.
        let two_users = r#"{"messages":[{"role":"user","content":"a"},{"role":"user","content":"b"}]}"#;
        assert!(render(&conv(two_users), 1, false).unwrap_err().contains("turn 1"));
        let answer_first = r#"{"messages":[{"role":"system","content":"s"},{"role":"assistant","content":"a"}]}"#;
        assert!(render(&conv(answer_first), 1, false).unwrap_err().contains("turn 0"));
        let fine = r#"{"messages":[{"role":"user","content":"a"},{"role":"model","content":"b"},{"role":"user","content":"c"}]}"#;
        assert!(render(&conv(fine), 1, true).is_ok());
    }
}
