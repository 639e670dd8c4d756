//! The comparison peer "plain tokio-tungstenite": `accept_hdr_async` with a callback that
//! answers 401 to a wrong token, and one `tokio::sync::broadcast` channel fanning every text
//! message out to every client, the sender included. Written the way the common tutorial
//! pattern goes, with a 4 KiB read buffer so its idle memory is not dominated by the default.
//!
//! Usage: tungstenite-peer ADDR TOKEN

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// Capacity of the broadcast channel; a receiver that falls further behind loses messages
/// (`RecvError::Lagged`), which is this design's known weakness.
const CHANNEL_CAPACITY: usize = 1024;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:3001".into());
    let token = args.next().unwrap_or_else(|| "mysecrettoken123".into());
    let listener = TcpListener::bind(&addr).await.expect("bind");
    println!("peer listening on ws://{}", listener.local_addr().expect("addr"));
    let (tx, _) = broadcast::channel::<Utf8Bytes>(CHANNEL_CAPACITY);
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        tokio::spawn(serve(stream, token.clone(), tx.clone()));
    }
}

async fn serve(stream: TcpStream, token: String, tx: broadcast::Sender<Utf8Bytes>) {
    let _ = stream.set_nodelay(true);
    let check = |request: &Request, response: Response| -> Result<Response, ErrorResponse> {
        let query = request.uri().query().unwrap_or_default();
        let presented = query
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(key, _)| *key == "token")
            .map(|(_, value)| value);
        if presented == Some(token.as_str()) {
            Ok(response)
        } else {
            let mut refusal = ErrorResponse::new(Some("invalid token".into()));
            *refusal.status_mut() = StatusCode::UNAUTHORIZED;
            Err(refusal)
        }
    };
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let Ok(socket) = tokio_tungstenite::accept_hdr_async_with_config(stream, check, Some(config)).await
    else {
        return;
    };
    let (mut sink, mut source) = socket.split();
    let mut rx = tx.subscribe();
    loop {
        tokio::select! {
            incoming = source.next() => match incoming {
                Some(Ok(Message::Text(text))) => { let _ = tx.send(text); }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            outgoing = rx.recv() => match outgoing {
                Ok(text) => if sink.send(Message::Text(text)).await.is_err() { break },
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => break,
            },
        }
    }
    let _ = sink.close().await;
}
