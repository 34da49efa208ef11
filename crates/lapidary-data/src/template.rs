//! Conversations and the Gemma chat formats ([`ChatFormat`]): Gemma 3's (`<bos>`, a system
//! message folded into the first user turn, `<start_of_turn>{user|model}\n…<end_of_turn>\n`
//! alternating from user, as its template requires, each image expanded to
//! `\n\n<start_of_image>` + N × `<image_soft_token>` + `<end_of_image>\n\n` as Gemma3Processor
//! does) and Gemma 4's (`<|turn>{role}\n…<turn|>\n`, images with a soft-token count each). Text
//! is trimmed. Also the spans of the text a model is trained on (the assistant turns). Not
//! tokenization.

use serde::Deserialize;

/// One dataset row: `{"messages": [...]}`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Conversation {
    /// The turns, in order.
    pub messages: Vec<Message>,
    /// The index of the first message whose assistant turns are trained on (responses only):
    /// 0 for a conversation, the completion's first message for a prompt/completion row (the
    /// prompt's answers are context, as TRL's completion-only loss has it).
    #[serde(skip)]
    pub trained_from: usize,
}

impl Conversation {
    /// A conversation trained on all its assistant turns.
    pub fn new(messages: Vec<Message>) -> Self {
        Conversation { messages, trained_from: 0 }
    }
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
    /// keys HF's processors read; remote URLs are refused when the row is encoded); without one
    /// (`{"type": "image"}`, TRL's placeholder), the row's next image from its image column.
    Image {
        /// The file; empty for a placeholder.
        #[serde(alias = "image", alias = "url", default)]
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
    /// through `<end_of_turn>\n`, or Gemma 4's turn marks): what a model trained on responses
    /// only learns.
    pub response_spans: Vec<(usize, usize)>,
}

/// The special strings of Gemma 3's format.
pub const BOS: &str = "<bos>";
/// Starts a turn.
pub const START_OF_TURN: &str = "<start_of_turn>";
/// Ends a turn.
pub const END_OF_TURN: &str = "<end_of_turn>";

/// A family's chat format: how turns, images and the generation prompt are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChatFormat {
    /// Gemma 3: the system message folded into the first user turn, turns alternating from
    /// user, `<start_of_turn>{user|model}\n…<end_of_turn>\n`, each image
    /// `\n\n<start_of_image>` + N × `<image_soft_token>` + `<end_of_image>\n\n`.
    Gemma3,
    /// Gemma 4: a leading system message as a turn of its own, `<|turn>{role}\n…<turn|>\n`
    /// with no required order, answers without their thinking (`<|channel>…<channel|>`), each
    /// image `\n\n<|image>` + N × `<|image|>` + `<image|>\n\n` (N per image), the generation
    /// prompt with an empty thinking channel (thinking off).
    Gemma4,
}

/// A format's special token strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FormatTokens {
    /// Starts a turn.
    pub start_of_turn: &'static str,
    /// Ends a turn.
    pub end_of_turn: &'static str,
    /// Starts an image.
    pub boi: &'static str,
    /// Ends an image.
    pub eoi: &'static str,
    /// The placeholder each image feature replaces.
    pub image: &'static str,
}

impl ChatFormat {
    /// The special token strings.
    pub fn tokens(self) -> FormatTokens {
        match self {
            ChatFormat::Gemma3 => FormatTokens {
                start_of_turn: START_OF_TURN,
                end_of_turn: END_OF_TURN,
                boi: "<start_of_image>",
                eoi: "<end_of_image>",
                image: "<image_soft_token>",
            },
            ChatFormat::Gemma4 => FormatTokens {
                start_of_turn: "<|turn>",
                end_of_turn: "<turn|>",
                boi: "<|image>",
                eoi: "<image|>",
                image: "<|image|>",
            },
        }
    }

    /// The text an image of `tokens` soft tokens becomes.
    pub fn image_block(self, tokens: usize) -> String {
        let t = self.tokens();
        format!("\n\n{}{}{}\n\n", t.boi, t.image.repeat(tokens), t.eoi)
    }

    /// What ends a rendered conversation that asks the model to answer.
    pub fn generation_prompt(self) -> &'static str {
        match self {
            ChatFormat::Gemma3 => "<start_of_turn>model\n",
            ChatFormat::Gemma4 => "<|turn>model\n<|channel>thought\n<channel|>",
        }
    }
}

/// The text an image becomes in Gemma 3's format: `\n\n<start_of_image>` + `tokens` ×
/// `<image_soft_token>` + `<end_of_image>\n\n`.
pub fn image_block(tokens: usize) -> String {
    ChatFormat::Gemma3.image_block(tokens)
}

/// Renders `conv` in Gemma 3's chat format with each image expanded to `image_tokens` soft
/// tokens; `add_generation_prompt` appends `<start_of_turn>model\n`. Errors name the turn.
pub fn render(conv: &Conversation, image_tokens: usize, add_generation_prompt: bool) -> Result<Rendered, String> {
    render_as(ChatFormat::Gemma3, conv, &mut |_| Ok(image_tokens), add_generation_prompt)
}

/// Renders `conv` in `format`; `image_tokens` gives each image's soft-token count from its path
/// (empty for a placeholder; called once per image, in order; its error stops the rendering).
/// Errors name the turn.
pub fn render_as(
    format: ChatFormat,
    conv: &Conversation,
    image_tokens: &mut dyn FnMut(&str) -> Result<usize, String>,
    add_generation_prompt: bool,
) -> Result<Rendered, String> {
    let tokens = format.tokens();
    let mut text = String::from(BOS);
    let mut images = Vec::new();
    let mut response_spans = Vec::new();
    let leading_system = conv.messages.first().is_some_and(|m| m.role == "system" || m.role == "developer");
    let turns = if leading_system { &conv.messages[1..] } else { &conv.messages[..] };
    let mut prefix = String::new();
    if leading_system {
        match format {
            ChatFormat::Gemma3 => prefix = format!("{}\n\n", system_text(&conv.messages[0].content)?),
            ChatFormat::Gemma4 => {
                let system = match &conv.messages[0].content {
                    Content::Text(t) => t.trim().to_string(),
                    Content::Parts(parts) => parts
                        .iter()
                        .map(|p| match p {
                            Part::Text { text } => Ok(text.trim()),
                            Part::Image { .. } => Err("the system message must be text only".to_string()),
                        })
                        .collect::<Result<String, String>>()?,
                };
                text.push_str(&format!("<|turn>system\n{system}<turn|>\n"));
            }
        }
    }
    if turns.is_empty() {
        return Err("no user or assistant turn".into());
    }
    for (i, m) in turns.iter().enumerate() {
        let role = match (m.role.as_str(), format) {
            ("user", _) => "user",
            ("assistant" | "model", _) => "model",
            ("system" | "developer", ChatFormat::Gemma4) => "system",
            ("system", ChatFormat::Gemma3) => return Err(format!("turn {i}: a system message is only allowed first")),
            (other, _) => {
                return Err(format!("turn {i}: unknown role {other:?} (expected system, user or assistant)"));
            }
        };
        // Gemma 3's chat template raises on anything else; Gemma 4's takes any order.
        if format == ChatFormat::Gemma3 && (role == "user") != (i % 2 == 0) {
            return Err(format!(
                "turn {i}: {} {} turn where {} turn is due: after an optional system message, turns must \
                 alternate user, assistant, user, … starting with user",
                if m.role.starts_with('a') { "an" } else { "a" },
                m.role,
                if i % 2 == 0 { "a user" } else { "an assistant" }
            ));
        }
        text.push_str(tokens.start_of_turn);
        text.push_str(role);
        text.push('\n');
        if i == 0 {
            text.push_str(&prefix);
        }
        let start = text.len();
        let clean = |t: &str| match (format, role) {
            (ChatFormat::Gemma4, "model") => strip_thinking(t),
            _ => t.trim().to_string(),
        };
        match &m.content {
            Content::Text(t) => text.push_str(&clean(t)),
            Content::Parts(parts) => {
                for p in parts {
                    match p {
                        Part::Text { text: t } => text.push_str(&clean(t)),
                        Part::Image { path } => {
                            if role != "user" {
                                return Err(format!("turn {i}: images are only allowed in user turns"));
                            }
                            let n = image_tokens(path)?;
                            text.push_str(&format.image_block(n));
                            images.push(path.clone());
                        }
                    }
                }
            }
        }
        text.push_str(tokens.end_of_turn);
        text.push('\n');
        if role == "model" && i + usize::from(leading_system) >= conv.trained_from {
            response_spans.push((start, text.len()));
        }
    }
    if add_generation_prompt {
        text.push_str(format.generation_prompt());
    }
    Ok(Rendered { text, images, response_spans })
}

/// The text of Gemma 3's system message: a string, or its first part (which must be text).
fn system_text(content: &Content) -> Result<String, String> {
    match content {
        Content::Text(t) => Ok(t.clone()),
        Content::Parts(parts) => match parts.first() {
            Some(Part::Text { text }) => Ok(text.clone()),
            _ => Err("the system message must start with text".into()),
        },
    }
}

/// An answer without its thinking, as Gemma 4's template writes past answers: of the pieces
/// between `<channel|>` marks, each keeps only what precedes a `<|channel>`; the result trimmed.
pub fn strip_thinking(text: &str) -> String {
    let kept: String = text.split("<channel|>").map(|part| part.split("<|channel>").next().unwrap_or("")).collect();
    kept.trim().to_string()
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
