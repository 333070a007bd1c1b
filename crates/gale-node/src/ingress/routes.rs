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

#[derive(Default)]
pub struct RouteTable {
    router: matchit::Router<usize>,
    entries: Vec<Entry>,
}

struct Entry {
    /// The route's path pattern, ready to pass to the guest as `x-gale-route`.
    pattern: Option<HeaderValue>,
    targets: Vec<(Option<Method>, Arc<Live>)>,
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
        let mut index = std::collections::HashMap::new();
        for live in functions {
            for route in live.spec.routes() {
                let Route { method, path } = route;
                let method = method.and_then(|m| Method::from_bytes(m.as_bytes()).ok());
                let i = match index.get(&path) {
                    Some(i) => *i,
                    None => {
                        if let Err(e) = table.router.insert(path.clone(), table.entries.len()) {
                            tracing::error!(function = %live.name, %path, error = %e, "route skipped");
                            continue;
                        }
                        table.entries.push(Entry {
                            pattern: HeaderValue::from_str(&path).ok(),
                            targets: Vec::new(),
                        });
                        index.insert(path, table.entries.len() - 1);
                        table.entries.len() - 1
                    }
                };
                table.entries[i].targets.push((method, live.clone()));
            }
        }
        table
    }

    pub fn lookup(&self, method: &Method, path: &str) -> Lookup<'_> {
        let Ok(found) = self.router.at(path) else {
            return Lookup::NotFound;
        };
        let entry = &self.entries[*found.value];
        let exact = |wanted: &Method| entry.targets.iter().find(|(m, _)| m.as_ref() == Some(wanted));
        let target = exact(method)
            .or_else(|| entry.targets.iter().find(|(m, _)| m.is_none()))
            // HEAD is GET without the body (hyper drops the body).
            .or_else(|| (method == Method::HEAD).then(|| exact(&Method::GET)).flatten());
        match target {
            Some((_, live)) => Lookup::Found {
                live: live.clone(),
                pattern: entry.pattern.as_ref(),
                params: found
                    .params
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            },
            None => {
                let allow: Vec<&str> = entry
                    .targets
                    .iter()
                    .filter_map(|(m, _)| m.as_ref().map(Method::as_str))
                    .collect();
                Lookup::MethodNotAllowed(allow.join(", "))
            }
        }
    }
}
