//! S3-compatible backup destinations: `s3://BUCKET/PREFIX` wherever a backup directory goes.
//! `object_store` speaks S3 (signing, multipart, listing); its HTTP requests go through
//! hyper with rustls on ring, the stack the rest of nrdot uses, instead of its reqwest and
//! aws-lc (a C build) default. Endpoint, region and credentials come from the standard
//! environment (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`;
//! under systemd, an `EnvironmentFile=`); an `http://` endpoint is allowed for local stores.
//! Callers are synchronous (the CLI, a blocking task): each call runs on a small runtime.
use std::time::SystemTime;

use futures_util::TryStreamExt;
use http_body_util::BodyExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::client::{
    ClientOptions, HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest,
    HttpRequestBody, HttpResponse, HttpResponseBody, HttpService,
};
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::backup::BackupError;

/// A bucket and a key prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Bucket.
    pub bucket: String,
    /// Prefix inside it, without slashes at either end (may be empty).
    pub prefix: String,
}

impl Target {
    /// `s3://bucket/some/prefix` → the target; anything else is not one.
    pub fn parse(url: &str) -> Option<Target> {
        let rest = url.strip_prefix("s3://")?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        (!bucket.is_empty()).then(|| Target {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
        })
    }

    fn key(&self, name: &str) -> Key {
        if self.prefix.is_empty() {
            Key::from(name)
        } else {
            Key::from(format!("{}/{name}", self.prefix))
        }
    }

    /// The URL of one archive in it.
    pub fn url(&self, name: &str) -> String {
        format!("s3://{}/{}", self.bucket, self.key(name))
    }
}

fn failed(what: &str, e: impl std::fmt::Display) -> BackupError {
    BackupError::Archive(format!("S3 {what}: {e}"))
}

fn store(t: &Target) -> Result<AmazonS3, BackupError> {
    let endpoint = std::env::var("AWS_ENDPOINT_URL")
        .or_else(|_| std::env::var("AWS_ENDPOINT"))
        .unwrap_or_default();
    AmazonS3Builder::from_env()
        .with_bucket_name(&t.bucket)
        .with_allow_http(endpoint.starts_with("http://"))
        .with_http_connector(Connector)
        .build()
        .map_err(|e| failed("configuration", e))
}

fn block_on<F: std::future::Future>(f: F) -> Result<F::Output, BackupError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| failed("runtime", e))?;
    // A bucket that does not answer fails the backup instead of hanging it.
    rt.block_on(async { tokio::time::timeout(std::time::Duration::from_secs(300), f).await })
        .map_err(|_| failed("request", "no answer within 300 s"))
}

/// Uploads one archive.
pub fn put(t: &Target, name: &str, bytes: Vec<u8>) -> Result<(), BackupError> {
    let s = store(t)?;
    block_on(s.put(&t.key(name), PutPayload::from(bytes)))?
        .map(|_| ())
        .map_err(|e| failed(&format!("upload of {}", t.url(name)), e))
}

/// Downloads one archive.
pub fn get(t: &Target, name: &str) -> Result<Vec<u8>, BackupError> {
    let s = store(t)?;
    block_on(async { s.get(&t.key(name)).await?.bytes().await })?
        .map(|b| b.to_vec())
        .map_err(|e| failed(&format!("download of {}", t.url(name)), e))
}

/// The archives under the prefix: (time, name, size), newest first.
pub fn list(t: &Target) -> Result<Vec<(SystemTime, String, u64)>, BackupError> {
    let s = store(t)?;
    let prefix = (!t.prefix.is_empty()).then(|| Key::from(t.prefix.as_str()));
    let metas: Vec<object_store::ObjectMeta> = block_on(s.list(prefix.as_ref()).try_collect())?
        .map_err(|e| failed(&format!("listing of s3://{}/{}", t.bucket, t.prefix), e))?;
    let mut out: Vec<_> = metas
        .into_iter()
        .filter_map(|m| {
            let name = m.location.filename()?.to_string();
            name.ends_with(crate::backup::EXTENSION)
                .then(|| (SystemTime::from(m.last_modified), name, m.size))
        })
        .collect();
    out.sort_by(|a, b| b.cmp(a));
    Ok(out)
}

/// Removes one archive.
pub fn delete(t: &Target, name: &str) -> Result<(), BackupError> {
    let s = store(t)?;
    block_on(s.delete(&t.key(name)))?.map_err(|e| failed(&format!("delete of {}", t.url(name)), e))
}

/// `object_store`'s HTTP through hyper and rustls.
#[derive(Debug)]
struct Connector;

impl HttpConnector for Connector {
    fn connect(&self, _options: &ClientOptions) -> object_store::Result<HttpClient> {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(|e| object_store::Error::Generic {
                store: "S3",
                source: Box::new(e),
            })?
            .https_or_http()
            .enable_http1()
            .build();
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(https);
        Ok(HttpClient::new(Service(client)))
    }
}

type Inner = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    HttpRequestBody,
>;

struct Service(Inner);

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("hyper")
    }
}

#[async_trait::async_trait]
impl HttpService for Service {
    async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let resp = self
            .0
            .request(req)
            .await
            .map_err(|e| HttpError::new(HttpErrorKind::Connect, e))?;
        let (parts, body) = resp.into_parts();
        let body = body.map_err(|e| HttpError::new(HttpErrorKind::Decode, e));
        Ok(http::Response::from_parts(
            parts,
            HttpResponseBody::new(body),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        assert_eq!(
            Target::parse("s3://b/x/y/"),
            Some(Target {
                bucket: "b".into(),
                prefix: "x/y".into()
            })
        );
        assert_eq!(
            Target::parse("s3://b").map(|t| t.url("a.nrbk")),
            Some("s3://b/a.nrbk".into())
        );
        assert_eq!(Target::parse("/var/backups"), None);
        assert_eq!(Target::parse("s3:///x"), None);
    }
}
