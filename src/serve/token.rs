//! The token endpoint (`/oauth/token`): refresh-token grants for the demo and tests.

use super::*;

use tokio::io::AsyncReadExt;
use tokio::time::timeout;
use tracing::info;

pub(super) async fn serve_token_request(
    mut stream: ServerStream,
    head: RequestHead,
    shared: &Shared,
) -> Result<(), ConnectionError> {
    shared.record_token_request();
    let reply = match read_token_request_body(&mut stream, &head).await? {
        Ok(body) => exchange_refresh_token(&body, shared),
        Err(rejection) => rejection,
    };
    let json = reply.body.to_string();
    let headers = [("Cache-Control", "no-store")];
    Ok(write_response(
        &mut stream,
        reply.status,
        &headers,
        "application/json",
        &json,
    )
    .await?)
}

pub(super) struct TokenReply {
    pub(super) status: u16,
    pub(super) body: serde_json::Value,
}

impl TokenReply {
    pub(super) fn error(status: u16, code: &str) -> Self {
        TokenReply {
            status,
            body: serde_json::json!({ "error": code }),
        }
    }
}

/// The request body, or the reply that rejects the request before the body matters.
pub(super) async fn read_token_request_body(
    stream: &mut ServerStream,
    head: &RequestHead,
) -> Result<Result<Vec<u8>, TokenReply>, ConnectionError> {
    if head.method != "POST" {
        return Ok(Err(TokenReply::error(405, "invalid_request")));
    }
    if head.header("transfer-encoding").is_some() {
        return Ok(Err(TokenReply::error(400, "invalid_request")));
    }
    let Some(Ok(length)) = head
        .header("content-length")
        .map(|value| value.parse::<usize>())
    else {
        return Ok(Err(TokenReply::error(400, "invalid_request")));
    };
    if length > MAX_TOKEN_BODY_LEN {
        return Ok(Err(TokenReply::error(413, "invalid_request")));
    }
    let mut body = head.bytes_read[head.head_len..].to_vec();
    body.truncate(length);
    let already = body.len();
    body.resize(length, 0);
    timeout(
        REQUEST_READ_TIMEOUT,
        stream.read_exact(&mut body[already..]),
    )
    .await??;
    Ok(Ok(body))
}

pub(super) fn exchange_refresh_token(body: &[u8], shared: &Shared) -> TokenReply {
    let field = |name: &str| {
        url::form_urlencoded::parse(body)
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.into_owned())
    };
    let (Some(grant_type), Some(refresh_token)) = (field("grant_type"), field("refresh_token"))
    else {
        return TokenReply::error(400, "invalid_request");
    };
    if grant_type != "refresh_token" {
        return TokenReply::error(400, "unsupported_grant_type");
    }
    if refresh_token.is_empty() {
        return TokenReply::error(400, "invalid_request");
    }
    if refresh_token == "revoked" {
        info!("refresh token revoked: invalid_grant");
        return TokenReply::error(400, "invalid_grant");
    }
    let grant = shared.issue_token();
    info!(number = grant.number, "issued a new access token");
    TokenReply {
        status: 200,
        body: serde_json::json!({
            "access_token": grant.access_token,
            "expires_in": shared.token_ttl.as_secs(),
            "refresh_token": grant.refresh_token,
            "token_type": "Bearer",
        }),
    }
}
