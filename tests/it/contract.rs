//! The channel contract: a chat channel written here against `earshot-channel` alone (no gateway
//! type in sight) plugs into the registry and gets what every channel gets: its complaints become
//! cases, and acknowledgements, status updates, agents' replies and the survey come back to it;
//! a reply quoting the channel's own id of one of our messages finds its case; the channel's own
//! identity is never acknowledged; a survey answered through the channel reaches downstream.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use earshot_channel::{
    Channel, ChannelKind, CustomerInfo, ExternalId, Identity, IdentityKind, Inbound, Intake, Outbound, OutboundKind,
    Recipient, ReplyRoute, SendError, Sent, ThreadHint,
};
use serde_json::{Value, json};

use crate::support::*;

/// A chat bot (it claims the `telegram` kind, which this version does not configure).
#[derive(Clone, Default)]
struct ChatChannel {
    sent: Arc<Mutex<Vec<Outbound>>>,
}

const BOT: &str = "testbot";
/// The bot's own chat: a message from it must never be answered.
const OWN_CHAT: &str = "999";

#[derive(Clone)]
struct Routes {
    intake: Arc<dyn Intake>,
}

/// `{chat, message_id, text, reply_to?}` → a complaint (or a follow-up).
async fn inbound(State(st): State<Routes>, Json(v): Json<Value>) -> (StatusCode, Json<Value>) {
    let chat = v["chat"].as_str().unwrap_or_default().to_owned();
    let message_id = v["message_id"].as_str().unwrap_or_default().to_owned();
    let thread = v["reply_to"].as_str().map(|r| ThreadHint {
        in_reply_to: vec![ExternalId(r.to_owned())],
        case_refs: vec![],
        open_case_within_secs: None,
        edits: None,
    });
    let msg = Inbound {
        channel: ChannelKind::Telegram,
        source: BOT.into(),
        external_id: ExternalId(format!("{chat}:{message_id}")),
        identities: vec![Identity { kind: IdentityKind::Telegram, value: chat.clone() }],
        customer: CustomerInfo::default(),
        reply_route: ReplyRoute::Direct {
            via: ChannelKind::Telegram,
            sender: BOT.into(),
            recipient: chat,
            reply_to: Some(message_id),
        },
        thread,
        subject: None,
        text: v["text"].as_str().unwrap_or_default().to_owned(),
        full_text: None,
        lang: None,
        category: None,
        order_id: None,
        metadata: Default::default(),
        attachments: vec![],
        raw: None,
        received_at: time::OffsetDateTime::now_utc(),
        automatic: None,
        content_digest: None,
    };
    match st.intake.submit(msg).await {
        Ok(r) => (StatusCode::ACCEPTED, Json(serde_json::to_value(&r).unwrap_or_default())),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "error": e.to_string() }))),
    }
}

/// `{token, answer}` → the survey answer, as a chat button would give it.
async fn answer(State(st): State<Routes>, Json(v): Json<Value>) -> StatusCode {
    let token = v["token"].as_str().unwrap_or_default();
    match st.intake.answer_survey(token, v["answer"].as_str().unwrap_or_default()).await {
        Ok(true) => StatusCode::OK,
        Ok(false) => StatusCode::GONE,
        Err(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

#[async_trait]
impl Channel for ChatChannel {
    fn kind(&self) -> ChannelKind {
        ChannelKind::Telegram
    }

    fn routes(&self, intake: Arc<dyn Intake>) -> Option<axum::Router> {
        Some(
            axum::Router::new()
                .route("/test/chat", axum::routing::post(inbound))
                .route("/test/chat/answer", axum::routing::post(answer))
                .with_state(Routes { intake }),
        )
    }

    async fn send(&self, msg: &Outbound) -> Result<Sent, SendError> {
        let ReplyRoute::Direct { recipient, .. } = &msg.reply_route else {
            return Err(SendError::Permanent { reason: "not a chat route".into() });
        };
        let mut sent = self.sent.lock().expect("lock");
        sent.push(msg.clone());
        // The chat's own message id, as a chat API would answer.
        Ok(Sent { provider_id: Some(format!("{recipient}:out{}", sent.len())), segments: None })
    }

    fn senders(&self) -> Vec<String> {
        vec![BOT.into()]
    }

    fn send_deadline(&self, _sender: &str) -> Duration {
        Duration::from_secs(2)
    }

    fn own_identities(&self) -> Vec<Recipient> {
        vec![Recipient::new(ChannelKind::Telegram, OWN_CHAT)]
    }
}

impl ChatChannel {
    fn sent(&self) -> Vec<Outbound> {
        self.sent.lock().expect("lock").clone()
    }

    async fn wait(&self, n: usize) -> Vec<Outbound> {
        eventually(15, &format!("{n} messages sent through the chat channel"), || async {
            let s = self.sent();
            (s.len() >= n).then_some(s)
        })
        .await
    }
}

async fn say(gw: &Gateway, body: Value) -> Value {
    let r = reqwest::Client::new().post(format!("{}/test/chat", gw.base)).json(&body).send().await.expect("post");
    assert_eq!(r.status(), 202);
    r.json().await.expect("receipt")
}

#[tokio::test]
async fn a_channel_written_against_the_contract_alone_gets_the_whole_lifecycle() {
    let db = TestDb::sqlite();
    let tickets = Receiver::start().await;
    let chat = ChatChannel::default();
    let toml = config_toml(&db.url, "") + &downstream_toml(&tickets.url, 20);
    let gw = Gateway::start_with_channels(&toml, vec![Arc::new(chat.clone())]).await;

    let receipt = say(&gw, json!({ "chat": "4242", "message_id": "7", "text": "我的快递三天没有更新了" })).await;
    let case_id = receipt["case_id"].as_str().expect("case").to_owned();
    let ack = chat.wait(1).await.remove(0);
    assert_eq!(ack.kind, OutboundKind::Ack);
    assert_eq!((ack.case_id.as_str(), ack.lang), (case_id.as_str(), earshot_channel::Lang::Zh));
    assert!(
        matches!(&ack.reply_route, ReplyRoute::Direct { recipient, reply_to: Some(m), .. } if recipient == "4242" && m == "7")
    );

    let ts = TicketStore::new(&gw, DOWNSTREAM_SECRET);
    assert_eq!(ts.status(&case_id, "in_progress").await.0, 200);
    let reply = json!({ "type": "public_reply", "data": { "text": "已为您催促快递公司。" } });
    assert_eq!(ts.send(&case_id, &reply).await.0, 200);
    assert_eq!(ts.status(&case_id, "resolved").await.0, 200);
    let sent = chat.wait(5).await;
    let kinds: Vec<&str> = sent.iter().map(|m| m.kind.name()).collect();
    assert_eq!(kinds, ["ack", "status_update", "agent_reply", "status_update", "survey"]);
    assert_eq!(sent[1].kind, OutboundKind::StatusUpdate { status: "in_progress".into() });
    assert!(sent[2].text.contains("已为您催促快递公司"), "{}", sent[2].text);
    let OutboundKind::Survey(survey) = &sent[4].kind else { panic!("a survey") };
    assert_eq!(survey.choices.len(), 7);

    // A reply to the agent's message (quoting the chat's id of it) continues the case.
    let follow = say(&gw, json!({ "chat": "4242", "message_id": "8", "text": "谢谢", "reply_to": "4242:out3" })).await;
    assert_eq!(
        (follow["case_id"].as_str(), follow["follow_up"].as_bool()),
        (Some(case_id.as_str()), Some(true)),
        "{follow}"
    );

    // The survey, answered through the channel, reaches downstream; "not solved" reopens.
    let r = reqwest::Client::new()
        .post(format!("{}/test/chat/answer", gw.base))
        .json(&json!({ "token": survey.token, "answer": "rating=3&solved=no" }))
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 200);
    let got = tickets.wait_until(10, "case.feedback", |g| g.iter().any(|x| x.body["type"] == "case.feedback")).await;
    let fb = &got.iter().find(|x| x.body["type"] == "case.feedback").expect("feedback").body["data"];
    assert_eq!((fb["rating"].as_u64(), fb["solved"].as_bool()), (Some(3), Some(false)), "{fb}");
    assert_eq!(fb["case"]["status"], "reopened");

    // The bot's own chat is never answered.
    say(&gw, json!({ "chat": OWN_CHAT, "message_id": "1", "text": "a message from ourselves" })).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        chat.sent()
            .iter()
            .all(|m| !matches!(&m.reply_route, ReplyRoute::Direct { recipient, .. } if recipient == OWN_CHAT))
    );
    gw.stop().await;
    db.cleanup().await;
}
