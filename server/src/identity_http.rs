//! The routes of the three mTLS listeners (see `docs/pki.md`): EST enrollment, the device API
//! (TUF read path and reports, each request checked against the device record), and the staff
//! API (role from the Technician CA certificate).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use hale_pki::{CaRole, PeerIdentity, PeerKind};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};
use warp::{Filter, Rejection, Reply};

use crate::app::App;
use crate::http::{json_reply, Body};
use crate::identity::{
    check_validity, DeviceStatus, EnrollAuth, Identity, IdentityError, StatusAction, MAX_CSR_BYTES,
    MAX_PAGE,
};
use crate::tls::Listeners;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Largest manifest or CRL pushed through the staff API.
const MAX_STAFF_BODY: u64 = 4 << 20;
use crate::identity::MAX_TOKEN_TTL;

/// The JSON error answer; a refusal that ends on its own (`renewal_too_early`) says when with
/// `Retry-After` (delta-seconds).
fn error_reply(e: &IdentityError) -> warp::reply::Response {
    if let IdentityError::Internal(m) = e {
        // the client sees "internal"; the operator needs the cause
        tracing::error!(error = %m, "internal error answered 500");
    }
    let mut r = json_reply(
        e.status(),
        &json!({"error": e.code(), "message": e.to_string()}),
    );
    if let Some(secs) = e.retry_after() {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    r
}

fn to_body(r: warp::reply::Response) -> Response<Body> {
    r.map(|b| b.map_err(|e| -> BoxError { Box::new(e) }).boxed_unsync())
}

/// The plain listener's answer to device API calls when TLS is configured.
pub fn plain_refused() -> Response<Body> {
    to_body(json_reply(
        StatusCode::FORBIDDEN,
        &json!({"error": "client_certificate_required",
                "message": "device calls are served only on the mTLS device listener"}),
    ))
}

/// The plain listener's answer to the publish API when TLS is configured.
pub fn plain_publish_refused() -> Response<Body> {
    to_body(json_reply(
        StatusCode::FORBIDDEN,
        &json!({"error": "client_certificate_required",
                "message": "with TLS configured, releases are published only on the mTLS staff listener \
                            (--staff-listen) with an operator certificate: hale-sign push --server \
                            https://STAFF --cert OPERATOR.crt --key OPERATOR.key --ca-cert SERVER_CA.crt"}),
    ))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, IdentityError> + Send + 'static,
) -> Result<T, IdentityError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| IdentityError::Internal(e.to_string()))?
}

fn with<T: Clone + Send + Sync + 'static>(
    v: T,
) -> impl Filter<Extract = (T,), Error = Infallible> + Clone {
    warp::any().map(move || v.clone())
}

// --- enrollment --------------------------------------------------------------------------------

const PEM_CHAIN: &str = "application/pem-certificate-chain";

fn chain_reply(pem: String) -> warp::reply::Response {
    warp::reply::with_header(pem, "content-type", PEM_CHAIN).into_response()
}

/// EST in RFC 7030's shape, PEM instead of PKCS#7.
pub fn enroll_routes(
    identity: Arc<Identity>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Infallible> + Clone {
    let cacerts = warp::get()
        .and(warp::path!(".well-known" / "est" / "cacerts"))
        .and(with(identity.clone()))
        .map(|id: Arc<Identity>| chain_reply(id.cacerts_pem().to_string()));
    let crl = warp::get()
        .and(warp::path!("crl" / "device-issuing.crl"))
        .and(with(identity.clone()))
        .map(|id: Arc<Identity>| match id.device_crl() {
            Some(c) => {
                warp::reply::with_header(c.der.clone(), "content-type", "application/pkix-crl")
                    .into_response()
            }
            None => error_reply(&IdentityError::Internal("no CRL yet".into())),
        });
    let enroll =
        warp::post()
            .and(warp::path!(".well-known" / "est" / "simpleenroll"))
            .and(warp::ext::optional::<PeerIdentity>())
            .and(warp::header::optional::<String>("authorization"))
            .and(warp::body::content_length_limit(MAX_CSR_BYTES as u64))
            .and(warp::body::bytes())
            .and(with(identity.clone()))
            .then(
                |peer: Option<PeerIdentity>,
                 auth: Option<String>,
                 body: Bytes,
                 id: Arc<Identity>| async move {
                    let r = blocking(move || {
                        let token = match auth.as_deref() {
                            None => None,
                            Some(h) => Some(
                                h.strip_prefix("Bearer ")
                                    .map(str::trim)
                                    .filter(|t| !t.is_empty() && t.len() <= 256)
                                    .ok_or(IdentityError::TokenInvalid)?
                                    .to_string(),
                            ),
                        };
                        let auth = match &token {
                            Some(t) => EnrollAuth::Token(t),
                            None => EnrollAuth::Certificate(peer.as_ref()),
                        };
                        let r = id.enroll(auth, &body, SystemTime::now());
                        if let Err(e) = &r {
                            id.audit_refused_enrollment("simpleenroll", &auth, e);
                        }
                        r
                    })
                    .await;
                    match r {
                        Ok(e) => chain_reply(e.chain_pem),
                        Err(e) => {
                            tracing::warn!(error = %e, "simpleenroll refused");
                            error_reply(&e)
                        }
                    }
                },
            );
    let reenroll = warp::post()
        .and(warp::path!(".well-known" / "est" / "simplereenroll"))
        .and(warp::ext::optional::<PeerIdentity>())
        .and(warp::body::content_length_limit(MAX_CSR_BYTES as u64))
        .and(warp::body::bytes())
        .and(with(identity))
        .then(
            |peer: Option<PeerIdentity>, body: Bytes, id: Arc<Identity>| async move {
                let r = blocking(move || {
                    let r = id.reenroll(peer.as_ref(), &body, SystemTime::now());
                    if let Err(e) = &r {
                        let auth = EnrollAuth::Certificate(peer.as_ref());
                        id.audit_refused_enrollment("simplereenroll", &auth, e);
                    }
                    r
                })
                .await;
                match r {
                    Ok(e) => chain_reply(e.chain_pem),
                    Err(e) => {
                        tracing::warn!(error = %e, "simplereenroll refused");
                        error_reply(&e)
                    }
                }
            },
        );
    cacerts
        .or(crl)
        .unify()
        .or(enroll)
        .unify()
        .or(reenroll)
        .unify()
        .recover(crate::http::recover)
        .unify()
}

// --- device API ----------------------------------------------------------------------------------

fn device_report_routes(
    app: Arc<App>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Infallible> + Clone {
    warp::post()
        .and(warp::path!("api" / "v1" / "devices" / String / "report"))
        .and(warp::ext::get::<PeerIdentity>())
        .and(warp::body::content_length_limit(
            app.config.max_report_bytes,
        ))
        .and(warp::body::bytes())
        .and(with(app))
        .and_then(
            |id: String, peer: PeerIdentity, body: Bytes, app: Arc<App>| async move {
                if peer.device_id() != Some(id.as_str()) {
                    return Ok::<_, Rejection>(error_reply(&IdentityError::IdentityMismatch(
                        format!(
                            "the report is for {id:?}, the certificate is {:?}'s",
                            peer.name
                        ),
                    )));
                }
                crate::http::report_handler(id, body, app).await
            },
        )
        .recover(crate::http::recover)
        .unify()
}

/// The device listener's handler: the device record check, then the TUF read path, then reports.
pub fn device_handler(
    app: Arc<App>,
    identity: Arc<Identity>,
) -> impl Fn(
    Request<Incoming>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response<Body>> + Send>>
       + Clone
       + Send
       + Sync
       + 'static {
    let warp_svc = warp::service(device_report_routes(app.clone()));
    move |req: Request<Incoming>| {
        let app = app.clone();
        let identity = identity.clone();
        let mut warp_svc = warp_svc.clone();
        Box::pin(async move {
            let Some(peer) = req.extensions().get::<PeerIdentity>().cloned() else {
                return to_body(error_reply(&IdentityError::ClientCertificateRequired(
                    "the device API needs a device certificate".into(),
                )));
            };
            // a sled read: in memory for a polling fleet, so inline rather than spawn_blocking
            match identity.check_device(&peer, SystemTime::now()) {
                Err(e) => return to_body(error_reply(&e)),
                Ok(record) if record.status == DeviceStatus::Quarantined => {
                    let is_report = req.method() == Method::POST
                        && req.uri().path().starts_with("/api/v1/devices/");
                    if !is_report {
                        return to_body(error_reply(&IdentityError::DeviceQuarantined(record.id)));
                    }
                }
                Ok(_) => {}
            }
            let reader = crate::rollout::Reader::Device(&peer.name);
            if let Some(resp) = crate::http::read_path(&app, &req, reader).await {
                return resp;
            }
            match tower_service::Service::call(&mut warp_svc, req).await {
                Ok(r) => to_body(r),
                Err(e) => match e {},
            }
        })
    }
}

/// A warp filter as the handler of [`crate::tls::serve`].
pub fn warp_handler<F>(
    filter: F,
) -> impl Fn(
    Request<Incoming>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response<Body>> + Send>>
       + Clone
       + Send
       + Sync
       + 'static
where
    F: Filter<Extract = (warp::reply::Response,), Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
{
    let svc = warp::service(filter);
    move |req: Request<Incoming>| {
        let mut svc = svc.clone();
        Box::pin(async move {
            match tower_service::Service::call(&mut svc, req).await {
                Ok(r) => to_body(r),
                Err(e) => match e {},
            }
        })
    }
}

/// The staff listener's handler: the certificate's validity and the Technician CA CRL are checked
/// on every request (the handshake only checks them when a connection opens), then the TUF read
/// path (what `hale-sign push` reads to choose what to send), then the staff routes and the
/// publish API.
pub fn staff_handler(
    app: Arc<App>,
    identity: Arc<Identity>,
    listeners: Arc<Listeners>,
) -> impl Fn(
    Request<Incoming>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response<Body>> + Send>>
       + Clone
       + Send
       + Sync
       + 'static {
    let routes = warp_handler(staff_routes(app.clone(), identity, listeners.clone()));
    move |req: Request<Incoming>| {
        let refused = req
            .extensions()
            .get::<PeerIdentity>()
            .and_then(|p| check_staff_certificate(&listeners, p, SystemTime::now()).err());
        match refused {
            Some(e) => {
                let r = to_body(error_reply(&e));
                Box::pin(async move { r })
            }
            None => {
                let app = app.clone();
                let routes = routes.clone();
                Box::pin(async move {
                    let staff = crate::rollout::Reader::Staff;
                    if let Some(resp) = crate::http::read_path(&app, &req, staff).await {
                        return resp;
                    }
                    routes(req).await
                })
            }
        }
    }
}

/// A staff certificate at `now`: within its validity, not on the loaded Technician CA CRL, and
/// that CRL current.
fn check_staff_certificate(
    listeners: &Listeners,
    peer: &PeerIdentity,
    now: SystemTime,
) -> Result<(), IdentityError> {
    check_validity(peer, now)?;
    if listeners.staff_certificate_revoked(&peer.certificate_serial) {
        return Err(IdentityError::CertificateRevoked {
            serial: peer.certificate_serial.clone(),
        });
    }
    if let Some(expired_at) = listeners.staff_crl_expired(now) {
        return Err(IdentityError::CrlExpired {
            ca: "Technician CA".into(),
            expired_at,
        });
    }
    Ok(())
}

// --- staff API -----------------------------------------------------------------------------------

/// What a staff request is about, for the audit record of its refusal.
#[derive(Debug, Clone, Copy)]
enum Target<'a> {
    /// no one device (a listing, an import, a rollout)
    None,
    /// the device of this id, as the request gives it
    Device(&'a str),
    /// the certificate of this serial, as the request gives it, and the device it was issued to
    Certificate(&'a str),
}

impl Target<'_> {
    /// `detail` with the device (and certificate) the request named, when it named one. Only a
    /// name that can be a device's (an enrolled device's id is a certificate name) or a
    /// certificate's serial (1 to 40 hex digits) is copied: anything else names no device, and
    /// the log takes no more of what the requester chose than a device id's 64 bytes.
    fn describe(self, id: &Identity, mut detail: Value) -> Value {
        let Some(d) = detail.as_object_mut() else {
            return detail;
        };
        match self {
            Target::None => {}
            Target::Device(device) => {
                if crate::identity::is_certificate_name(device) {
                    d.insert("device".into(), json!(device));
                }
            }
            Target::Certificate(serial) => {
                let serial = serial.to_ascii_lowercase();
                if crate::identity::is_certificate_serial(&serial) {
                    if let Ok(Some(c)) = id.store().certificate(&serial) {
                        d.insert("device".into(), json!(c.device));
                    }
                    d.insert("certificate".into(), json!(serial));
                }
            }
        }
        detail
    }
}

/// What a staff role may do. A refusal is audited (`staff-refused`): the peer holds a
/// certificate of our Technician CA, so it is someone the log should name, and the record names
/// the device the request was about (`target`), when it was about one.
fn allow(
    id: &Identity,
    peer: &PeerIdentity,
    action: &'static str,
    operator_only: bool,
    target: Target<'_>,
) -> Result<String, IdentityError> {
    let r = allow_role(peer, action, operator_only);
    if let Err(e) = &r {
        id.audit_refusal(
            "staff-refused",
            &format!("{}:{}", peer.kind, peer.name),
            e,
            target.describe(id, json!({"action": action})),
        );
    }
    r
}

fn allow_role(
    peer: &PeerIdentity,
    action: &'static str,
    operator_only: bool,
) -> Result<String, IdentityError> {
    let role = match peer.kind {
        PeerKind::Operator => "operator",
        PeerKind::Technician if !operator_only => "technician",
        PeerKind::Technician => {
            return Err(IdentityError::RoleForbidden {
                role: "technician".into(),
                action,
            })
        }
        other => {
            return Err(IdentityError::RoleForbidden {
                role: other.to_string(),
                action,
            })
        }
    };
    Ok(format!("{role}:{}", peer.name))
}

/// The publish API's authorization on the staff listener: an operator certificate; the audit
/// actor is `operator:<certificate name>`.
fn operator_certificate(
    identity: Arc<Identity>,
) -> impl Filter<Extract = (String,), Error = Rejection> + Clone {
    warp::ext::get::<PeerIdentity>().and_then(move |p: PeerIdentity| {
        let id = identity.clone();
        async move {
            allow(&id, &p, "publish", true, Target::None).map_err(|e| {
                tracing::warn!(peer = %p.name, error = %e, "publish refused");
                crate::http::api_error(e.status(), e.code(), e.to_string())
            })
        }
    })
}

#[derive(Debug, Deserialize)]
struct PageQuery {
    after: Option<String>,
    limit: Option<usize>,
}

#[derive(Debug, Deserialize)]
struct AuditQuery {
    after: Option<u64>,
    limit: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReasonBody {
    reason: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    serial: String,
    ttl_secs: Option<u64>,
    model: Option<String>,
}

fn reply(r: Result<Value, IdentityError>) -> warp::reply::Response {
    match r {
        Ok(v) => json_reply(StatusCode::OK, &v),
        Err(e) => error_reply(&e),
    }
}

fn parse_json<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Result<T, IdentityError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| IdentityError::BadRequest(e.to_string()))
}

/// The staff API.
pub fn staff_routes(
    app: Arc<App>,
    identity: Arc<Identity>,
    listeners: Arc<Listeners>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Infallible> + Clone {
    let base = || {
        warp::path("api")
            .and(warp::path("v1"))
            .and(warp::path("staff"))
    };
    let peer = || warp::ext::get::<PeerIdentity>();
    let list = warp::get()
        .and(base())
        .and(warp::path("devices"))
        .and(warp::path::end())
        .and(peer())
        .and(warp::query::<PageQuery>())
        .and(with(identity.clone()))
        .then(
            |p: PeerIdentity, q: PageQuery, id: Arc<Identity>| async move {
                reply(
                    blocking(move || {
                        allow(&id, &p, "list devices", false, Target::None)?;
                        let limit = q.limit.unwrap_or(MAX_PAGE).clamp(1, MAX_PAGE);
                        let rows = id.store().devices(q.after.as_deref(), limit)?;
                        let next = (rows.len() == limit)
                            .then(|| rows.last().map(|r| r.id.clone()))
                            .flatten();
                        Ok(json!({"devices": rows, "next": next}))
                    })
                    .await,
                )
            },
        );
    let status = warp::post()
        .and(base())
        .and(warp::path!("devices" / String / String))
        .and(peer())
        .and(warp::body::content_length_limit(4096))
        .and(warp::body::bytes())
        .and(with(identity.clone()))
        .then(
            |dev: String, action: String, p: PeerIdentity, body: Bytes, id: Arc<Identity>| async move {
                reply(
                    blocking(move || {
                        let (action, what, operator_only) = match action.as_str() {
                            "quarantine" => (StatusAction::Quarantine, "quarantine a device", false),
                            "reactivate" => (StatusAction::Reactivate, "reactivate a device", false),
                            "decommission" => {
                                (StatusAction::Decommission, "decommission a device", true)
                            }
                            _ => {
                                return Err(IdentityError::BadRequest(format!(
                                    "unknown action {action:?}"
                                )))
                            }
                        };
                        let actor = allow(&id, &p, what, operator_only, Target::Device(&dev))?;
                        let b: ReasonBody = parse_json(&body)?;
                        let r = id.set_status(&dev, action, &actor, b.reason.as_deref(), SystemTime::now())?;
                        serde_json::to_value(r).map_err(|e| IdentityError::Internal(e.to_string()))
                    })
                    .await,
                )
            },
        );
    let revoke = warp::post()
        .and(base())
        .and(warp::path!("certificates" / String / "revoke"))
        .and(peer())
        .and(warp::body::content_length_limit(4096))
        .and(warp::body::bytes())
        .and(with(identity.clone()))
        .then(
            |serial: String, p: PeerIdentity, body: Bytes, id: Arc<Identity>| async move {
                reply(
                    blocking(move || {
                        let actor = allow(
                            &id,
                            &p,
                            "revoke a certificate",
                            true,
                            Target::Certificate(&serial),
                        )?;
                        let b: ReasonBody = parse_json(&body)?;
                        id.revoke(
                            &serial,
                            b.reason.as_deref().unwrap_or("unspecified"),
                            &actor,
                            SystemTime::now(),
                        )
                    })
                    .await,
                )
            },
        );
    let token = warp::post()
        .and(base())
        .and(warp::path!("enroll-tokens"))
        .and(peer())
        .and(warp::body::content_length_limit(4096))
        .and(warp::body::bytes())
        .and(with(identity.clone()))
        .then(|p: PeerIdentity, body: Bytes, id: Arc<Identity>| async move {
            reply(
                blocking(move || {
                    let parsed = serde_json::from_slice::<TokenBody>(&body);
                    let target = match &parsed {
                        Ok(b) => Target::Device(&b.serial),
                        Err(_) => Target::None,
                    };
                    let actor = allow(&id, &p, "issue an enrollment token", false, target)?;
                    let b = parsed.map_err(|e| IdentityError::BadRequest(e.to_string()))?;
                    let ttl = b.ttl_secs.unwrap_or(86_400);
                    if ttl == 0 || ttl > MAX_TOKEN_TTL {
                        return Err(IdentityError::BadRequest(format!(
                            "ttl_secs: 1 to {MAX_TOKEN_TTL}"
                        )));
                    }
                    let (secret, expires_at) = id.issue_token(
                        &b.serial,
                        b.model.as_deref(),
                        Duration::from_secs(ttl),
                        &actor,
                        SystemTime::now(),
                    )?;
                    Ok(json!({"token": secret.as_str(), "serial": b.serial, "expires_at": expires_at}))
                })
                .await,
            )
        });
    let manifest = warp::post()
        .and(base())
        .and(warp::path!("manifests"))
        .and(peer())
        .and(warp::body::content_length_limit(MAX_STAFF_BODY))
        .and(warp::body::bytes())
        .and(with(identity.clone()))
        .then(
            |p: PeerIdentity, body: Bytes, id: Arc<Identity>| async move {
                reply(
                    blocking(move || {
                        let actor = allow(&id, &p, "import a manifest", true, Target::None)?;
                        id.import_manifest(&body, &actor)
                    })
                    .await,
                )
            },
        );
    let reports = warp::get()
        .and(base())
        .and(warp::path("reports"))
        .and(warp::path::end())
        .and(peer())
        .and(warp::query::<PageQuery>())
        .and(with(app.clone()))
        .and(with(identity.clone()))
        .then(
            |p: PeerIdentity, q: PageQuery, app: Arc<App>, id: Arc<Identity>| async move {
                reply(
                    blocking(move || {
                        allow(&id, &p, "list device reports", false, Target::None)?;
                        let (reports, next) =
                            crate::http::report_page(&*app.store, q.after.as_deref(), q.limit)
                                .map_err(|e| IdentityError::Internal(e.to_string()))?;
                        Ok(json!({"reports": reports, "next": next}))
                    })
                    .await,
                )
            },
        );
    let publish = crate::http::publish_routes(app.clone(), operator_certificate(identity.clone()));
    let rollouts = rollout_routes(app.clone(), identity.clone(), base(), peer());
    let audit = warp::get()
        .and(base())
        .and(warp::path!("audit"))
        .and(peer())
        .and(warp::query::<AuditQuery>())
        .and(with(app))
        .and(with(identity.clone()))
        .then(
            |p: PeerIdentity, q: AuditQuery, app: Arc<App>, id: Arc<Identity>| async move {
                reply(
                    blocking(move || {
                        allow(&id, &p, "read the audit log", true, Target::None)?;
                        let limit = q.limit.unwrap_or(MAX_PAGE).clamp(1, MAX_PAGE);
                        let from = q.after.map_or(0, |a| a.saturating_add(1));
                        let records: Vec<Value> = app
                            .store
                            .audit_page(from, limit)?
                            .iter()
                            .filter_map(|(_, b)| serde_json::from_slice(b).ok())
                            .collect();
                        let next = (records.len() == limit)
                            .then(|| records.last().and_then(|r| r.get("seq").cloned()))
                            .flatten();
                        Ok(json!({"records": records, "next": next}))
                    })
                    .await,
                )
            },
        );
    let crl =
        warp::put()
            .and(base())
            .and(warp::path!("crl" / String))
            .and(peer())
            .and(warp::body::content_length_limit(MAX_STAFF_BODY))
            .and(warp::body::bytes())
            .and(with(identity))
            .and(with(listeners))
            .then(
                |slug: String,
                 p: PeerIdentity,
                 body: Bytes,
                 id: Arc<Identity>,
                 l: Arc<Listeners>| async move {
                    reply(
                        blocking(move || {
                            let actor = allow(&id, &p, "load a CRL", true, Target::None)?;
                            let ca = CaRole::from_slug(&slug)
                                .filter(|c| matches!(c, CaRole::Manufacturing | CaRole::Technician))
                                .ok_or_else(|| {
                                    IdentityError::BadRequest(
                                        "CRLs can be pushed for technician or manufacturing".into(),
                                    )
                                })?;
                            let pem = std::str::from_utf8(&body)
                                .map_err(|_| IdentityError::BadCrl("not PEM".into()))?;
                            let n = l.load_offline_crl(ca, pem, SystemTime::now(), true)?;
                            id.record_crl_load(ca.slug(), n, "staff api", &actor);
                            Ok(json!({"ca": ca.slug(), "crl_number": n}))
                        })
                        .await,
                    )
                },
            );
    list.or(status)
        .unify()
        .or(revoke)
        .unify()
        .or(token)
        .unify()
        .or(manifest)
        .unify()
        .or(audit)
        .unify()
        .or(crl)
        .unify()
        .or(reports)
        .unify()
        .or(publish)
        .unify()
        .or(rollouts)
        .unify()
        .recover(crate::http::recover)
        .unify()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RolloutBody {
    percent: u64,
    target: Option<String>,
}

/// `GET /rollouts` (technician, operator), `PUT /rollouts/{sha256}` `{"percent", "target"?}` and
/// `DELETE /rollouts/{sha256}` (operator): [`crate::rollout`]. Changes are audited.
fn rollout_routes(
    app: Arc<App>,
    identity: Arc<Identity>,
    base: impl Filter<Extract = (), Error = Rejection> + Clone + Send + Sync + 'static,
    peer: impl Filter<Extract = (PeerIdentity,), Error = Rejection> + Clone + Send + Sync + 'static,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    let rollout_error = |e: crate::rollout::RolloutError| match e {
        crate::rollout::RolloutError::Store(m) => IdentityError::Internal(m),
        crate::rollout::RolloutError::Unknown(sha) => IdentityError::RolloutUnknown(sha),
        e @ (crate::rollout::RolloutError::NotRecorded(_)
        | crate::rollout::RolloutError::EarlierUnsettled { .. }
        | crate::rollout::RolloutError::InForceUnsettled(_)) => {
            IdentityError::Internal(e.to_string())
        }
        e => IdentityError::BadRequest(e.to_string()),
    };
    // recorded while the change holds: the chain's order is the order of the changes; a
    // change that cannot be recorded is undone and refused
    let audited = |app: &App, kind: &'static str, actor: &str, r: &crate::rollout::Rollout| {
        let v = serde_json::to_value(r).map_err(|e| crate::rollout::RecordFailed {
            message: e.to_string(),
            written: false,
        })?;
        app.audit
            .append(kind, actor, v)
            .map(|_| ())
            .map_err(crate::rollout::RecordFailed::from)
    };
    let list = warp::get()
        .and(base.clone())
        .and(warp::path!("rollouts"))
        .and(peer.clone())
        .and(with(app.clone()))
        .and(with(identity.clone()))
        .then(
            |p: PeerIdentity, app: Arc<App>, id: Arc<Identity>| async move {
                reply(
                    blocking(move || {
                        allow(&id, &p, "list rollouts", false, Target::None)?;
                        Ok(json!({"rollouts": app.rollouts.list()}))
                    })
                    .await,
                )
            },
        );
    let set = warp::put()
        .and(base.clone())
        .and(warp::path!("rollouts" / String))
        .and(peer.clone())
        .and(warp::body::content_length_limit(4096))
        .and(warp::body::bytes())
        .and(with(app.clone()))
        .and(with(identity.clone()))
        .then(
            move |sha: String, p: PeerIdentity, body: Bytes, app: Arc<App>, id: Arc<Identity>| async move {
                reply(
                    blocking(move || {
                        let actor = allow(&id, &p, "change a rollout", true, Target::None)?;
                        let b: RolloutBody = serde_json::from_slice(&body)
                            .map_err(|e| IdentityError::BadRequest(e.to_string()))?;
                        let r = app
                            .rollouts
                            .set(&sha, b.percent, b.target.as_deref(), &actor, crate::now(), |r| {
                                audited(&app, "rollout", &actor, r)
                            })
                            .map_err(rollout_error)?;
                        tracing::info!(%actor, sha256 = %r.sha256, percent = r.percent, "rollout set");
                        serde_json::to_value(&r).map_err(|e| IdentityError::Internal(e.to_string()))
                    })
                    .await,
                )
            },
        );
    let end = warp::delete()
        .and(base)
        .and(warp::path!("rollouts" / String))
        .and(peer)
        .and(with(app))
        .and(with(identity))
        .then(
            move |sha: String, p: PeerIdentity, app: Arc<App>, id: Arc<Identity>| async move {
                reply(
                    blocking(move || {
                        let actor = allow(&id, &p, "end a rollout", true, Target::None)?;
                        let r = app
                            .rollouts
                            .end(&sha, &actor, |r| audited(&app, "rollout-end", &actor, r))
                            .map_err(rollout_error)?;
                        tracing::info!(%actor, sha256 = %r.sha256, "rollout ended: the image goes to every device");
                        serde_json::to_value(&r).map_err(|e| IdentityError::Internal(e.to_string()))
                    })
                    .await,
                )
            },
        );
    list.or(set).unify().or(end).unify()
}
