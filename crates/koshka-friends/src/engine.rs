//! [`FriendsEngine`]: the [`Engine`] implementation tying keys, records, state and privacy.
//!
//! Write path: parse the key, check the shard and input, lock every partition the record
//! touches (in index order), check limits against the locked state, append ONE record, apply
//! it through the same code as replay, unlock. Read path: lock the owner's partition (and the
//! second user's, in index order, for two-user queries) and format the reply.

use koshka_engine::commit::{self, Locked, Partitions, Positioned};
use koshka_engine::{
    ApplyCtx, Cx, Engine, Error, Journal, Outcome, Request, Result, Session, ShardSpec, Stat,
    StoreMode,
};
use koshka_keys::friends::{
    parse_id_list, parse_incr_key, DeleteKey, GetKey, ListRef, Mode, PrivacyKeys, SetKey,
};
use koshka_keys::Slice;

use crate::ops::Record;
use crate::privacy::{canonicalize, evaluate, parse_rules, render_into, Viewer};
use crate::reply::{push_item, push_u32};
use crate::scratch;
use crate::state::{intersect, Census, Friend, Partition, UserRef};
use crate::{
    snapshot, FRIENDS_PER_USER_MAX, FRIEND_REQUESTS_PER_USER_MAX, MASK_BITS, PARTITIONS,
    PRIVACY_KEYS_PER_USER_MAX,
};

/// The friends engine. Construct with [`FriendsEngine::new`] and host as `Arc<dyn Engine>`.
#[derive(Debug)]
pub struct FriendsEngine {
    shard: ShardSpec,
    partitions: Partitions<Partition>,
}

impl Positioned for Partition {
    fn pos(&self) -> u64 {
        self.pos
    }

    fn set_pos(&mut self, pos: u64) {
        self.pos = pos;
    }
}

impl koshka_engine::LogRecord for Record {
    fn record_type(&self) -> u16 {
        Record::record_type(self)
    }

    fn encode(&self, out: &mut Vec<u8>) {
        Record::encode_into(self, out);
    }
}

/// Appends `total,` then whatever `items` appends, where the total (returned by `items`) is
/// only known at the end: the digits are inserted in front by one move, so no list of ids is
/// collected first.
fn counted(out: &mut Vec<u8>, items: impl FnOnce(&mut Vec<u8>) -> u32) {
    let start = out.len();
    let total = items(out);
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(total).as_bytes();
    let len = out.len() - start;
    out.resize(out.len() + digits.len(), 0);
    out.copy_within(start..start + len, start + digits.len());
    out[start..start + digits.len()].copy_from_slice(digits);
}

fn temp_name(tag: &str) -> Vec<u8> {
    let mut name = b"temp".to_vec();
    name.extend_from_slice(tag.as_bytes());
    name
}

/// Parses a folder mask value (`0..=2^31-1`, bits 0..=30).
fn parse_mask(value: &[u8]) -> Result<u32> {
    let text = value.trim_ascii();
    let ok = !text.is_empty() && text.len() <= 10 && text.iter().all(u8::is_ascii_digit);
    let n = if ok {
        text.iter()
            .fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0'))
    } else {
        return Err(Error::client(format!(
            "mask must be a decimal number, got {:?}",
            String::from_utf8_lossy(text)
        )));
    };
    if n > u64::from(MASK_BITS) {
        return Err(Error::client(format!("mask {n} has bits above folder 30")));
    }
    // NOTE: n <= MASK_BITS.
    #[expect(clippy::cast_possible_truncation)]
    Ok(n as u32)
}

fn not_self(user: u32, other: u32, what: &str) -> Result<()> {
    if user == other {
        return Err(Error::client(format!(
            "user {user} cannot {what} themselves"
        )));
    }
    Ok(())
}

impl FriendsEngine {
    /// An empty engine holding shard `shard`.
    #[must_use]
    pub fn new(shard: ShardSpec) -> Self {
        let partitions = Partitions::new(PARTITIONS, Partition::default);
        Self { shard, partitions }
    }

    /// The partition of user `id`. Ids on one shard share `id mod count`, so dividing by the
    /// shard count first spreads them over every partition.
    #[must_use]
    pub fn partition_of(&self, id: u32) -> usize {
        ((id / self.shard.count.max(1)) as usize) % PARTITIONS
    }

    fn is_local(&self, id: u32) -> bool {
        self.shard.check(i64::from(id)).is_ok()
    }

    fn check_owner(&self, id: u32) -> Result<()> {
        self.shard.check(i64::from(id))
    }

    /// Locks the partitions of `ids` in index order.
    fn lock(&self, ids: &[u32]) -> Locked<'_, Partition> {
        match ids {
            [one] => self.partitions.lock_one(self.partition_of(*one)),
            _ => {
                let indexes: smallvec::SmallVec<[usize; 4]> =
                    ids.iter().map(|&id| self.partition_of(id)).collect();
                self.partitions.lock_set(&indexes)
            }
        }
    }

    fn lock_all(&self) -> Locked<'_, Partition> {
        self.partitions.lock_all()
    }

    fn user<'l>(&self, locked: &'l Locked<'_, Partition>, id: u32) -> Option<UserRef<'l>> {
        locked.get(self.partition_of(id)).and_then(|p| p.user(id))
    }

    /// The users a record touches, or `None` for "lock everything".
    fn record_users(record: &Record) -> Vec<u32> {
        match record {
            Record::FriendAddPair { user, friend, .. } | Record::FriendDelPair { user, friend } => {
                vec![*user, *friend]
            }
            Record::UserDel { user, mirrored } => {
                let mut ids = mirrored.clone();
                ids.push(*user);
                ids
            }
            Record::FriendSetHalf { user, .. }
            | Record::FriendOr { user, .. }
            | Record::FriendAndNot { user, .. }
            | Record::FriendDelHalf { user, .. }
            | Record::FolderSet { user, .. }
            | Record::FolderDel { user, .. }
            | Record::RequestSet { user, .. }
            | Record::RequestDel { user, .. }
            | Record::RequestDelAll { user }
            | Record::PrivacySet { user, .. }
            | Record::PrivacyDel { user, .. } => vec![*user],
        }
    }

    /// Applies `record` to the locked partitions it is new to: the apply function shared by
    /// live updates ([`commit::commit`]) and replay ([`commit::replay`]). Cannot fail.
    fn apply_record(&self, record: &Record, locked: &mut Locked<'_, Partition>, time: u32) {
        let mut on = |id: u32, f: &mut dyn FnMut(&mut Partition)| {
            if let Some(p) = locked.fresh(self.partition_of(id)) {
                f(p);
            }
        };
        match record {
            Record::FriendAddPair { user, friend, mask } => {
                on(*user, &mut |p| p.set_friend(*user, *friend, *mask, time));
                on(*friend, &mut |p| p.ensure_friend(*friend, *user, time));
            }
            Record::FriendSetHalf { user, friend, mask } => {
                on(*user, &mut |p| p.set_friend(*user, *friend, *mask, time));
            }
            Record::FriendOr { user, friend, bits } => on(*user, &mut |p| {
                p.update_mask(*user, *friend, |m| m | bits);
            }),
            Record::FriendAndNot { user, friend, bits } => on(*user, &mut |p| {
                p.update_mask(*user, *friend, |m| m & !bits);
            }),
            Record::FriendDelPair { user, friend } => {
                on(*user, &mut |p| {
                    p.remove_friend(*user, *friend);
                });
                on(*friend, &mut |p| {
                    p.remove_friend(*friend, *user);
                });
            }
            Record::FriendDelHalf { user, friend } => on(*user, &mut |p| {
                p.remove_friend(*user, *friend);
            }),
            Record::FolderSet { user, folder, ids } => on(*user, &mut |p| {
                p.set_folder(*user, *folder, ids);
            }),
            Record::FolderDel { user, folder } => on(*user, &mut |p| {
                p.delete_folder(*user, *folder);
            }),
            Record::UserDel { user, mirrored } => {
                on(*user, &mut |p| p.remove_user(*user));
                for friend in mirrored {
                    on(*friend, &mut |p| {
                        p.remove_friend(*friend, *user);
                    });
                }
            }
            Record::RequestSet { user, from, mask } => {
                on(*user, &mut |p| p.set_request(*user, *from, *mask, time));
            }
            Record::RequestDel { user, from } => on(*user, &mut |p| {
                p.remove_request(*user, *from);
            }),
            Record::RequestDelAll { user } => on(*user, &mut |p| {
                p.clear_requests(*user);
            }),
            Record::PrivacySet { user, key, rules } => on(*user, &mut |p| {
                p.set_privacy(*user, key, rules.clone().into_boxed_slice());
            }),
            Record::PrivacyDel { user, key } => on(*user, &mut |p| {
                p.remove_privacy(*user, key);
            }),
        }
    }

    /// Appends `record` and applies it; the caller holds its partitions.
    fn commit(
        &self,
        locked: &mut Locked<'_, Partition>,
        record: &Record,
        journal: &dyn Journal,
    ) -> Result<()> {
        commit::commit(journal, locked, record, |r, l, time| {
            self.apply_record(r, l, time);
        })?;
        Ok(())
    }

    fn resolve_list(list: ListRef, session: &Session) -> Result<Vec<u32>> {
        match list {
            ListRef::Inline(ids) => Ok(ids),
            ListRef::Temp(tag) => match session.temp(&temp_name(&tag)) {
                Some(bytes) => Ok(parse_id_list(bytes)?),
                None => Err(Error::client(format!(
                    "no temp list {tag:?} on this connection"
                ))),
            },
        }
    }

    // ----- reads -----

    fn get_friends(&self, out: &mut Vec<u8>, user: u32, folder: u8, mode: Mode, slice: Slice) {
        let locked = self.lock(&[user]);
        let Some(u) = self.user(&locked, user) else {
            format_friends(out, 0, |_| unreachable_friend(), |_| 0, mode, slice);
            return;
        };
        let all = u.friends;
        if folder == 0 {
            let ids = all.ids();
            format_friends(out, all.len(), |i| all.at(i), |i| ids[i], mode, slice);
        } else {
            let bit = crate::mask_bit(folder);
            scratch::with(|scratch| {
                let list = &mut scratch.friends;
                list.extend(
                    all.special_masks()
                        .iter()
                        .filter(|m| m.1 & bit != 0)
                        .filter_map(|m| all.get(m.0)),
                );
                format_friends(out, list.len(), |i| list[i], |i| list[i].id, mode, slice);
            });
        }
    }

    /// `total,(id,mask,date)…` newest first, from the `(id, mask, date)` items `collect` adds
    /// in any order. `collect` runs under the partition lock it takes; the sort (the whole
    /// list, up to thousands of entries for a popular user) runs after the lock is released,
    /// so other workers reading or writing that partition do not wait for it.
    fn get_recent(
        out: &mut Vec<u8>,
        collect: impl FnOnce(&mut Vec<(u32, u32, u32)>),
        slice: Slice,
    ) {
        scratch::with(|scratch| {
            let items = &mut scratch.dated;
            collect(items);
            // Newest first; equal dates put the larger id first so the order is total.
            items.sort_unstable_by_key(|&(id, _, date)| std::cmp::Reverse((date, id)));
            push_u32(out, u32::try_from(items.len()).unwrap_or(u32::MAX));
            for i in slice.indexes(items.len()) {
                let (id, mask, date) = items[i];
                push_item(out, id);
                push_item(out, mask);
                push_item(out, date);
            }
        });
    }

    fn check_privacy(
        &self,
        out: &mut Vec<u8>,
        viewer: u32,
        owner: u32,
        keys: &PrivacyKeys<'_>,
    ) -> bool {
        let viewer_local = viewer != 0 && viewer != owner && self.is_local(viewer);
        let locked = if viewer_local {
            self.lock(&[owner, viewer])
        } else {
            self.lock(&[owner])
        };
        let owner_data = self.user(&locked, owner);
        let viewer_data = if viewer_local {
            self.user(&locked, viewer)
        } else {
            None
        };
        let mask = owner_data.map_or(0, |u| u.mask_of(viewer));
        let mut fof_cache: Option<Option<bool>> = None;
        let mut fof = || {
            *fof_cache.get_or_insert_with(|| {
                if viewer == 0 {
                    // The anonymous viewer has no friends.
                    return Some(false);
                }
                if !viewer_local {
                    return None;
                }
                let (Some(o), Some(v)) = (owner_data, viewer_data) else {
                    return Some(false);
                };
                let mut any = false;
                intersect(o.friends.ids(), v.friends.ids(), |_| any = true);
                Some(any)
            })
        };
        let start = out.len();
        scratch::with(|scratch| {
            let rules = &mut scratch.rules;
            for key in keys.iter() {
                rules.clear();
                let found = owner_data.is_some_and(|u| u.privacy_into(key, rules));
                let answer = if found {
                    evaluate(rules, owner, Viewer { id: viewer, mask }, &mut fof).as_char()
                } else if viewer == owner {
                    b'3'
                } else {
                    b'?'
                };
                out.push(answer);
            }
        });
        // A single unknown key is a miss; a batch answers `?` for it.
        !(keys.len() == 1 && out.get(start) == Some(&b'?'))
    }

    fn common_counts(&self, out: &mut Vec<u8>, user: u32, others: &[u32]) {
        push_u32(out, u32::try_from(others.len()).unwrap_or(u32::MAX));
        for &other in others {
            if !self.is_local(other) {
                out.extend_from_slice(b",-1");
                continue;
            }
            let locked = self.lock(&[user, other]);
            let mut count = 0u32;
            if let (Some(a), Some(b)) = (self.user(&locked, user), self.user(&locked, other)) {
                intersect(a.friends.ids(), b.friends.ids(), |_| count += 1);
            }
            push_item(out, count);
        }
    }

    /// Renders the answer to a read into `out`; `Ok(false)` is a miss.
    fn render_get(&self, key: GetKey<'_>, session: &Session, out: &mut Vec<u8>) -> Result<bool> {
        Ok(match key {
            GetKey::Friends {
                user,
                folder,
                mode,
                slice,
            } => {
                self.check_owner(user)?;
                self.get_friends(out, user, folder, mode, slice);
                true
            }
            GetKey::FriendCount { user, folder } => {
                self.check_owner(user)?;
                let locked = self.lock(&[user]);
                let bit = crate::mask_bit(folder);
                let n = self
                    .user(&locked, user)
                    .map_or(0, |u| u.friends.count_with(bit));
                push_u32(out, u32::try_from(n).unwrap_or(u32::MAX));
                true
            }
            GetKey::RecentFriends { user, slice } => {
                self.check_owner(user)?;
                let collect = |items: &mut Vec<(u32, u32, u32)>| {
                    let locked = self.lock(&[user]);
                    if let Some(u) = self.user(&locked, user) {
                        items.extend(u.friends.iter().map(|f| (f.id, f.mask, f.date)));
                    }
                };
                Self::get_recent(out, collect, slice);
                true
            }
            GetKey::Requests { user, slice } => {
                self.check_owner(user)?;
                let collect = |items: &mut Vec<(u32, u32, u32)>| {
                    let locked = self.lock(&[user]);
                    if let Some(u) = self.user(&locked, user) {
                        items.extend(u.requests().iter().map(|r| (r.from, r.mask, r.date)));
                    }
                };
                Self::get_recent(out, collect, slice);
                true
            }
            GetKey::Friend { user, friend } => {
                self.check_owner(user)?;
                let locked = self.lock(&[user]);
                self.user(&locked, user)
                    .and_then(|u| u.friend(friend))
                    .map(|f| push_u32(out, f.mask))
                    .is_some()
            }
            GetKey::Request { user, from } => {
                self.check_owner(user)?;
                let locked = self.lock(&[user]);
                self.user(&locked, user)
                    .and_then(|u| u.request(from))
                    .map(|r| push_u32(out, r.mask))
                    .is_some()
            }
            GetKey::Privacy { user, key } => {
                self.check_owner(user)?;
                let locked = self.lock(&[user]);
                let user = self.user(&locked, user);
                scratch::with(|scratch| {
                    let found = user.is_some_and(|u| u.privacy_into(&key, &mut scratch.rules));
                    if found {
                        render_into(out, &scratch.rules);
                    }
                    found
                })
            }
            GetKey::Check {
                viewer,
                owner,
                keys,
            } => {
                self.check_owner(owner)?;
                self.check_privacy(out, viewer, owner, &keys)
            }
            GetKey::CommonFriends { user, other } => {
                self.check_owner(user)?;
                self.check_owner(other)?;
                let locked = self.lock(&[user, other]);
                counted(out, |out| {
                    let mut count = 0u32;
                    if let (Some(a), Some(b)) =
                        (self.user(&locked, user), self.user(&locked, other))
                    {
                        intersect(a.friends.ids(), b.friends.ids(), |id| {
                            count += 1;
                            push_item(out, id);
                        });
                    }
                    count
                });
                true
            }
            GetKey::FriendsAmong { user, list } => {
                self.check_owner(user)?;
                let mut candidates = Self::resolve_list(list, session)?;
                candidates.sort_unstable();
                candidates.dedup();
                let locked = self.lock(&[user]);
                counted(out, |out| {
                    let mut count = 0u32;
                    if let Some(a) = self.user(&locked, user) {
                        intersect(a.friends.ids(), &candidates, |id| {
                            count += 1;
                            push_item(out, id);
                        });
                    }
                    count
                });
                true
            }
            GetKey::CommonCounts { user, list } => {
                self.check_owner(user)?;
                let others = Self::resolve_list(list, session)?;
                self.common_counts(out, user, &others);
                true
            }
        })
    }

    // ----- writes -----

    fn set_friend(
        &self,
        user: u32,
        friend: u32,
        half: bool,
        value: &[u8],
        journal: &dyn Journal,
    ) -> Result<()> {
        not_self(user, friend, "befriend")?;
        let mask = parse_mask(value)?;
        let pair = !half && self.is_local(friend);
        let mut locked = if pair {
            self.lock(&[user, friend])
        } else {
            self.lock(&[user])
        };
        let full = |id: u32, other: u32| {
            self.user(&locked, id).is_some_and(|u| {
                u.friend(other).is_none() && u.friends.len() >= FRIENDS_PER_USER_MAX
            })
        };
        for (id, other) in
            [(user, friend), (friend, user)]
                .into_iter()
                .take(if pair { 2 } else { 1 })
        {
            if full(id, other) {
                return Err(Error::client(format!(
                    "user {id} already has {FRIENDS_PER_USER_MAX} friends"
                )));
            }
        }
        let record = if pair {
            Record::FriendAddPair { user, friend, mask }
        } else {
            Record::FriendSetHalf { user, friend, mask }
        };
        self.commit(&mut locked, &record, journal)
    }

    fn set_request(&self, user: u32, from: u32, value: &[u8], journal: &dyn Journal) -> Result<()> {
        not_self(user, from, "send a friend request to")?;
        let mask = parse_mask(value)?;
        let mut locked = self.lock(&[user]);
        let full = self.user(&locked, user).is_some_and(|u| {
            u.request(from).is_none() && u.requests().len() >= FRIEND_REQUESTS_PER_USER_MAX
        });
        if full {
            return Err(Error::client(format!(
                "user {user} already has {FRIEND_REQUESTS_PER_USER_MAX} friend requests"
            )));
        }
        self.commit(
            &mut locked,
            &Record::RequestSet { user, from, mask },
            journal,
        )
    }

    fn set_privacy(
        &self,
        user: u32,
        key: String,
        value: &[u8],
        journal: &dyn Journal,
    ) -> Result<()> {
        let rules = canonicalize(&parse_rules(value.trim_ascii())?, user);
        let mut locked = self.lock(&[user]);
        let full = self.user(&locked, user).is_some_and(|u| {
            !u.has_privacy(&key) && u.privacy_count() >= PRIVACY_KEYS_PER_USER_MAX
        });
        if full {
            return Err(Error::client(format!(
                "user {user} already has {PRIVACY_KEYS_PER_USER_MAX} privacy keys"
            )));
        }
        self.commit(
            &mut locked,
            &Record::PrivacySet { user, key, rules },
            journal,
        )
    }

    fn delete_parsed(&self, key: DeleteKey, journal: &dyn Journal) -> Result<bool> {
        let (user, record) = match key {
            DeleteKey::Friend { user, friend, half } => {
                self.check_owner(user)?;
                not_self(user, friend, "unfriend")?;
                let pair = !half && self.is_local(friend);
                let mut locked = if pair {
                    self.lock(&[user, friend])
                } else {
                    self.lock(&[user])
                };
                let has =
                    |a: u32, b: u32| self.user(&locked, a).is_some_and(|u| u.friend(b).is_some());
                let found = has(user, friend) || (pair && has(friend, user));
                if !found {
                    return Ok(false);
                }
                let record = if pair {
                    Record::FriendDelPair { user, friend }
                } else {
                    Record::FriendDelHalf { user, friend }
                };
                self.commit(&mut locked, &record, journal)?;
                return Ok(true);
            }
            DeleteKey::User { user } => {
                self.check_owner(user)?;
                let mut locked = self.lock_all();
                let Some(data) = self.user(&locked, user) else {
                    return Ok(false);
                };
                let mirrored: Vec<u32> = data
                    .friends
                    .ids()
                    .iter()
                    .copied()
                    .filter(|&f| self.is_local(f))
                    .filter(|&f| {
                        self.user(&locked, f)
                            .is_some_and(|u| u.friend(user).is_some())
                    })
                    .collect();
                self.commit(&mut locked, &Record::UserDel { user, mirrored }, journal)?;
                return Ok(true);
            }
            DeleteKey::Folder { user, folder } => (user, Record::FolderDel { user, folder }),
            DeleteKey::Request { user, from } => (user, Record::RequestDel { user, from }),
            DeleteKey::Requests { user } => (user, Record::RequestDelAll { user }),
            DeleteKey::Privacy { user, key } => (user, Record::PrivacyDel { user, key }),
        };
        self.check_owner(user)?;
        let mut locked = self.lock(&[user]);
        let found = self.user(&locked, user).is_some_and(|u| match &record {
            Record::FolderDel { folder, .. } => {
                let bit = crate::mask_bit(*folder);
                u.friends.special_masks().iter().any(|m| m.1 & bit != 0)
                    || u.privacy_entries().iter().any(|e| {
                        e.rules
                            .iter()
                            .any(|r| r.target == crate::privacy::Target::Folder(*folder))
                    })
            }
            Record::RequestDel { from, .. } => u.request(*from).is_some(),
            Record::RequestDelAll { .. } => !u.requests().is_empty(),
            Record::PrivacyDel { key, .. } => u.has_privacy(key),
            _ => false,
        });
        if found {
            self.commit(&mut locked, &record, journal)?;
        }
        Ok(found)
    }

    /// `set <key>`: friend, folder, request, privacy rule or temp list.
    fn store(
        &self,
        key: &[u8],
        value: &[u8],
        session: &mut Session,
        journal: &dyn Journal,
    ) -> Result<Outcome> {
        match SetKey::parse(key)? {
            SetKey::Friend { user, friend, half } => {
                self.check_owner(user)?;
                self.set_friend(user, friend, half, value, journal)?;
            }
            SetKey::Folder { user, folder } => {
                self.check_owner(user)?;
                let mut ids = parse_id_list(value)?;
                ids.sort_unstable();
                ids.dedup();
                let mut locked = self.lock(&[user]);
                if self
                    .user(&locked, user)
                    .is_none_or(|u| u.friends.is_empty())
                {
                    return Ok(Outcome::NotStored);
                }
                self.commit(
                    &mut locked,
                    &Record::FolderSet { user, folder, ids },
                    journal,
                )?;
            }
            SetKey::Request { user, from } => {
                self.check_owner(user)?;
                self.set_request(user, from, value, journal)?;
            }
            SetKey::Privacy { user, key } => {
                self.check_owner(user)?;
                self.set_privacy(user, key, value, journal)?;
            }
            SetKey::Temp { tag } => {
                parse_id_list(value)?;
                session.put_temp(&temp_name(&tag), value.to_vec())?;
            }
        }
        Ok(Outcome::Stored { cas: 0 })
    }

    /// `incr`/`decr friend<user>_<friend> <bits>`: OR / AND-NOT folder bits.
    fn change_mask(
        &self,
        key: &[u8],
        incr: bool,
        delta: u64,
        journal: &dyn Journal,
    ) -> Result<Outcome> {
        let delta =
            i64::try_from(delta).map_err(|_| Error::client("invalid numeric delta argument"))?;
        let delta = if incr { delta } else { -delta };
        let (user, friend) = parse_incr_key(key)?;
        self.check_owner(user)?;
        not_self(user, friend, "befriend")?;
        let bits = u32::try_from(delta.unsigned_abs())
            .ok()
            .filter(|b| *b <= MASK_BITS)
            .ok_or_else(|| Error::client(format!("mask {delta} has bits above folder 30")))?;
        let mut locked = self.lock(&[user]);
        if self
            .user(&locked, user)
            .and_then(|u| u.friend(friend))
            .is_none()
        {
            return Ok(Outcome::Miss);
        }
        let record = if delta >= 0 {
            Record::FriendOr { user, friend, bits }
        } else {
            Record::FriendAndNot { user, friend, bits }
        };
        self.commit(&mut locked, &record, journal)?;
        let mask = self.user(&locked, user).map_or(0, |u| u.mask_of(friend));
        Ok(Outcome::Number {
            value: u64::from(mask),
            cas: 0,
            exptime: 0,
        })
    }

    /// Counts of the whole image.
    #[must_use]
    pub fn census(&self) -> Census {
        let mut census = Census::default();
        for partition in self.partitions.iter() {
            census.add(&partition.lock());
        }
        census
    }
}

fn unreachable_friend() -> Friend {
    Friend {
        id: 0,
        mask: 0,
        date: 0,
    }
}

fn format_friends(
    out: &mut Vec<u8>,
    len: usize,
    at: impl Fn(usize) -> Friend,
    id_at: impl Fn(usize) -> u32,
    mode: Mode,
    slice: Slice,
) {
    let total = u32::try_from(len).unwrap_or(u32::MAX);
    if mode == Mode::Packed {
        let positions = slice.indexes(len);
        out.reserve(4 + 4 * positions.len());
        out.extend_from_slice(&total.to_le_bytes());
        for i in positions {
            out.extend_from_slice(&id_at(i).to_le_bytes());
        }
        return;
    }
    push_u32(out, total);
    for i in slice.indexes(len) {
        if mode == Mode::Ids {
            push_item(out, id_at(i));
            continue;
        }
        let f = at(i);
        push_item(out, f.id);
        push_item(out, f.mask);
        if mode == Mode::Full {
            push_item(out, f.date);
        }
    }
}

impl Engine for FriendsEngine {
    fn name(&self) -> &'static str {
        "friends"
    }

    fn execute(&self, request: &Request<'_>, cx: &mut Cx<'_>) -> Result<Outcome> {
        match *request {
            Request::Get { key } => {
                let parsed = GetKey::parse(key)?;
                let session = &*cx.session;
                let mut failed = None;
                let mut parsed = Some(parsed);
                let found = cx.reply.value(key, 0, &mut |out| {
                    let Some(parsed) = parsed.take() else {
                        return false;
                    };
                    match self.render_get(parsed, session, out) {
                        Ok(found) => found,
                        Err(e) => {
                            failed = Some(e);
                            false
                        }
                    }
                });
                match failed {
                    Some(e) => Err(e),
                    None if found => Ok(Outcome::Hit),
                    None => Ok(Outcome::Miss),
                }
            }
            Request::Store {
                mode: StoreMode::Set,
                key,
                data,
                ..
            } => self.store(key, data, cx.session, cx.journal),
            Request::Delete { key, cas: None } => Ok(
                match self.delete_parsed(DeleteKey::parse(key)?, cx.journal)? {
                    true => Outcome::Deleted,
                    false => Outcome::Miss,
                },
            ),
            Request::Arith {
                key,
                incr,
                delta,
                options,
            } if options == koshka_engine::ArithOptions::default() => {
                self.change_mask(key, incr, delta, cx.journal)
            }
            _ => Err(Error::NotSupported { engine: "friends" }),
        }
    }

    fn apply(&self, record_type: u16, payload: &[u8], ctx: ApplyCtx) -> Result<()> {
        let record = Record::decode(record_type, payload)?;
        let mut locked = self.lock(&Self::record_users(&record));
        commit::replay(&mut locked, &record, ctx, |r, l, time| {
            self.apply_record(r, l, time);
        });
        Ok(())
    }

    fn write_snapshot(&self, out: &mut dyn std::io::Write) -> Result<()> {
        out.write_all(&snapshot::header())?;
        let mut buf = Vec::new();
        for (index, partition) in self.partitions.iter().enumerate() {
            snapshot::encode_partition(index, &partition.lock(), &mut buf);
            out.write_all(&buf)?;
        }
        out.write_all(&snapshot::TRAILER)?;
        Ok(())
    }

    fn load_snapshot(&self, input: &mut dyn std::io::Read) -> Result<()> {
        let mut header = [0u8; 12];
        input.read_exact(&mut header)?;
        snapshot::check_header(&header)?;
        let mut seen = [false; PARTITIONS];
        let mut loaded = Vec::with_capacity(PARTITIONS);
        for _ in 0..PARTITIONS {
            let mut head = [0u8; 16];
            input.read_exact(&mut head)?;
            let index = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
            let mut pos_bytes = [0u8; 8];
            pos_bytes.copy_from_slice(&head[4..12]);
            let pos = u64::from_le_bytes(pos_bytes);
            let len = u32::from_le_bytes([head[12], head[13], head[14], head[15]]) as usize;
            if index >= PARTITIONS || seen[index] {
                return Err(Error::Corrupt {
                    what: "snapshot",
                    reason: format!("partition index {index} repeated or out of range"),
                });
            }
            seen[index] = true;
            let mut body = vec![0u8; len];
            input.read_exact(&mut body)?;
            let home = |id: u32| self.partition_of(id);
            loaded.push((index, snapshot::decode_partition(index, pos, &body, &home)?));
        }
        let mut trailer = [0u8; 4];
        input.read_exact(&mut trailer)?;
        if trailer != snapshot::TRAILER {
            return Err(Error::Corrupt {
                what: "snapshot",
                reason: "missing trailer".into(),
            });
        }
        for (index, partition) in loaded {
            *self.partitions.lock(index) = partition;
        }
        Ok(())
    }

    fn stats(&self) -> Vec<Stat> {
        let census = self.census();
        let per_edge = if census.edges == 0 {
            0.0
        } else {
            // NOTE: a ratio for display; precision loss is irrelevant.
            #[expect(clippy::cast_precision_loss)]
            let ratio = census.memory_bytes as f64 / census.edges as f64;
            ratio
        };
        vec![
            ("friends_users".into(), census.users.to_string()),
            ("friends_edges".into(), census.edges.to_string()),
            ("friends_requests".into(), census.requests.to_string()),
            (
                "friends_privacy_keys".into(),
                census.privacy_keys.to_string(),
            ),
            (
                "friends_memory_bytes".into(),
                census.memory_bytes.to_string(),
            ),
            ("friends_bytes_per_edge".into(), format!("{per_edge:.1}")),
            ("friends_partitions".into(), PARTITIONS.to_string()),
        ]
    }
}

#[cfg(test)]
pub(crate) fn image(engine: &FriendsEngine) -> Vec<(u32, crate::state::User)> {
    let mut users: Vec<(u32, crate::state::User)> = engine
        .partitions
        .iter()
        .flat_map(|p| {
            let p = p.lock();
            p.user_ids()
                .into_iter()
                .filter_map(|id| p.user(id).map(|u| (id, u.to_user())))
                .collect::<Vec<_>>()
        })
        .collect();
    users.sort_by_key(|(id, _)| *id);
    users
}
