//! The gateway's routing table, rebuilt whole on every change of functions
//! and swapped in atomically, so a request sees either the old routes or
//! the new, never a mix.

use crate::NodeError;
use crate::functions::live::Live;
use crate::functions::{Follow, Snapshot};
use gale_core::Route;
use http::{HeaderValue, Method};
use std::sync::{Arc, RwLock};

/// The current table; follows the live functions.
#[derive(Default)]
pub struct Routes {
    table: RwLock<Arc<RouteTable>>,
}

impl Routes {
    /// The table as of now (a lock held only to clone an `Arc`).
    pub fn table(&self) -> Arc<RouteTable> {
        crate::read(&self.table).clone()
    }
}

#[async_trait::async_trait]
impl Follow for Routes {
    async fn functions_changed(&self, functions: &Snapshot) -> Result<(), NodeError> {
        *crate::write(&self.table) = Arc::new(RouteTable::build(functions.values()));
        Ok(())
    }
}

/// One router per method, each holding every route that accepts it, so a
/// request is matched among the routes that accept its method: the most
/// specific path wins (a static segment over a `{param}` over a
/// `{*catch-all}`), and `GET /a/b` does not hide `/a/{*rest}` from a POST.
#[derive(Default)]
pub struct RouteTable {
    /// Routes of every method, for the methods no route names.
    any: matchit::Router<usize>,
    methods: Vec<(Method, matchit::Router<usize>)>,
    targets: Vec<Target>,
}

struct Target {
    /// The route's path pattern, ready to pass to the guest as `x-gale-route`.
    pattern: Option<HeaderValue>,
    live: Arc<Live>,
}

pub enum Lookup<'a> {
    Found {
        live: Arc<Live>,
        pattern: Option<&'a HeaderValue>,
        params: Vec<(String, String)>,
    },
    NotFound,
    MethodNotAllowed(String),
}

impl RouteTable {
    /// Builds the table from every live function. Routes were checked for
    /// conflicts at deploy; one that still fails to insert is skipped and logged.
    pub fn build<'a>(functions: impl IntoIterator<Item = &'a Arc<Live>>) -> RouteTable {
        let mut table = RouteTable::default();
        let mut any_method = Vec::new();
        let mut named = std::collections::HashSet::new();
        for live in functions {
            for Route { method, path } in live.spec.routes() {
                let target = table.targets.len();
                table.targets.push(Target {
                    pattern: HeaderValue::from_str(&path).ok(),
                    live: live.clone(),
                });
                match method.and_then(|m| Method::from_bytes(m.as_bytes()).ok()) {
                    Some(method) => {
                        let router = match table.methods.iter().position(|(m, _)| *m == method) {
                            Some(i) => &mut table.methods[i].1,
                            None => {
                                table.methods.push((method.clone(), matchit::Router::new()));
                                &mut table.methods.last_mut().expect("just pushed").1
                            }
                        };
                        insert(router, &path, target, live);
                        named.insert((method, path));
                    }
                    None => any_method.push((path, target, live.clone())),
                }
            }
        }
        // A route for every method joins each method's router after the
        // routes naming that method, which win on the same path.
        for (path, target, live) in any_method {
            for (method, router) in &mut table.methods {
                if !named.contains(&(method.clone(), path.clone())) {
                    insert(router, &path, target, &live);
                }
            }
            insert(&mut table.any, &path, target, &live);
        }
        table
    }

    pub fn lookup(&self, method: &Method, path: &str) -> Lookup<'_> {
        let router = |m: &Method| self.methods.iter().find(|(own, _)| own == m).map(|(_, r)| r);
        let found = match router(method) {
            Some(r) => r.at(path).ok(),
            None => self.any.at(path).ok(),
        }
        // HEAD is GET without the body (hyper drops the body).
        .or_else(|| {
            (method == Method::HEAD)
                .then(|| router(&Method::GET)?.at(path).ok())
                .flatten()
        });
        let Some(found) = found else {
            let allow: Vec<&str> = self
                .methods
                .iter()
                .filter(|(_, r)| r.at(path).is_ok())
                .map(|(m, _)| m.as_str())
                .collect();
            return if allow.is_empty() {
                Lookup::NotFound
            } else {
                Lookup::MethodNotAllowed(allow.join(", "))
            };
        };
        let target = &self.targets[*found.value];
        Lookup::Found {
            live: target.live.clone(),
            pattern: target.pattern.as_ref(),
            params: found
                .params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }
}

fn insert(router: &mut matchit::Router<usize>, path: &str, target: usize, live: &Live) {
    if let Err(e) = router.insert(path, target) {
        tracing::error!(function = %live.name, %path, error = %e, "route skipped");
    }
}
