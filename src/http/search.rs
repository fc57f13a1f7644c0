//! Queries: `GET /Users`, `GET /Groups`, their `POST .search`, and `POST /.search` at the
//! service root (RFC 7644 §3.4.3: both resource types, users first, each in creation order).
//! Every attribute a filter names must be one `/Schemas` describes (400 `invalidFilter`
//! otherwise). With `sortBy` (RFC 7644 §3.4.2.3, on `scim::list::SORTABLE`) the matching
//! resources are loaded, sorted stably (ties in creation order) and paged here; without it the
//! store pages.

use crate::http::error::{json, Resp};
use crate::http::router::{store_error, Call};
use crate::http::{groups, users};
use crate::scim::list::{list_response, parse_list_query, ListQuery, Sort};
use crate::scim::resource::{render_group, render_user, ResourceType};
use crate::scim::schema::check_filter;
use crate::scim::ScimError;
use crate::store::{StoredGroup, StoredUser};
use serde_json::Value;

enum Item {
    User(StoredUser),
    Group(StoredGroup),
}

/// A list query over `rt` (`None`: the service root, users then groups).
///
/// # Errors
/// 400 for a bad query or a filter naming an unknown attribute; 503 when the store is down.
pub async fn list(
    call: &Call,
    rt: Option<ResourceType>,
    pairs: Vec<(String, String)>,
) -> Result<Resp, ScimError> {
    let mut q = parse_list_query(
        &pairs,
        call.settings.filter_limits,
        call.settings.max_page_size,
    )?;
    if let Some(f) = &mut q.filter {
        check_filter(f, rt, &call.settings.schemas)?;
    }
    let types: &[ResourceType] = match rt {
        Some(ResourceType::User) => &[ResourceType::User],
        Some(ResourceType::Group) => &[ResourceType::Group],
        None => &[ResourceType::User, ResourceType::Group],
    };
    let (items, total) = match q.sort {
        None => unsorted(call, &q, types).await?,
        Some(sort) => sorted(call, &q, sort, types).await?,
    };
    let mut resources = Vec::with_capacity(items.len());
    for item in &items {
        resources.push(match item {
            Item::User(u) => users::render(call, u, &q.attributes).await?,
            Item::Group(g) => groups::render(call, g, &q.attributes).await?,
        });
    }
    Ok(json(200, &list_response(resources, total, q.start_index)))
}

/// One page of one resource type from the store.
async fn fetch(
    call: &Call,
    rt: ResourceType,
    q: &ListQuery,
    start: u64,
    count: u64,
) -> Result<(Vec<Item>, u64), ScimError> {
    let store = &call.ctx.store;
    let base = call.base_url.clone();
    let filter = q.filter.clone();
    Ok(match rt {
        ResourceType::User => {
            let page = store
                .list_users(filter, start, count, base)
                .await
                .map_err(store_error)?;
            (page.items.into_iter().map(Item::User).collect(), page.total)
        }
        ResourceType::Group => {
            let page = store
                .list_groups(filter, start, count, base)
                .await
                .map_err(store_error)?;
            (
                page.items.into_iter().map(Item::Group).collect(),
                page.total,
            )
        }
    })
}

/// The store pages: the types one after the other, `startIndex` counting across them.
async fn unsorted(
    call: &Call,
    q: &ListQuery,
    types: &[ResourceType],
) -> Result<(Vec<Item>, u64), ScimError> {
    let (mut start, mut left, mut total) = (q.start_index.max(1), q.count, 0u64);
    let mut items = Vec::new();
    for rt in types {
        let (page, t) = fetch(call, *rt, q, start, left).await?;
        left = left.saturating_sub(page.len() as u64);
        start = if start > t { start - t } else { 1 };
        total = total.saturating_add(t);
        items.extend(page);
    }
    Ok((items, total))
}

/// Every match loaded, sorted by its key (users before groups among equal keys), then paged.
async fn sorted(
    call: &Call,
    q: &ListQuery,
    sort: Sort,
    types: &[ResourceType],
) -> Result<(Vec<Item>, u64), ScimError> {
    let mut keyed: Vec<(Option<String>, Item)> = Vec::new();
    for rt in types {
        let (all, _) = fetch(call, *rt, q, 1, u64::MAX).await?;
        for item in all {
            let plain: Value = match &item {
                Item::User(u) => render_user(&u.id, &u.data, &u.meta, None, &call.base_url),
                Item::Group(g) => render_group(&g.id, &g.data, &g.meta, None, &call.base_url),
            };
            keyed.push((sort.key(&plain), item));
        }
    }
    sort.sort(&mut keyed);
    let total = keyed.len() as u64;
    let skip = usize::try_from(q.start_index.max(1) - 1).unwrap_or(usize::MAX);
    let take = usize::try_from(q.count).unwrap_or(usize::MAX);
    let items = keyed
        .into_iter()
        .skip(skip)
        .take(take)
        .map(|(_, item)| item)
        .collect();
    Ok((items, total))
}
