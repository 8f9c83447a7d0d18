//! Binlog records of the news engine. Every update is one of these; applying cannot fail.

use koshka_engine::codec::{put_u32, put_u8, Reader};
use koshka_engine::{Error, LogRecord, Result};
use koshka_keys::news::TYPE_MAX;

/// `EVENT_ADD author type user group owner place item`: dated by the record's log time.
pub const RECORD_EVENT_ADD: u16 = 1;
/// `AUTHOR_DEL author`: every event and the mask.
pub const RECORD_AUTHOR_DEL: u16 = 2;
/// `MASK_SET author mask`.
pub const RECORD_MASK_SET: u16 = 3;
/// `NOTIFY_ADD uid type user owner place item`.
pub const RECORD_NOTIFY_ADD: u16 = 4;
/// `NOTIFY_HIDE uid id show`.
pub const RECORD_NOTIFY_HIDE: u16 = 5;
/// `NOTIFY_USER_HIDE uid user show`.
pub const RECORD_NOTIFY_USER_HIDE: u16 = 6;
/// `NOTIFY_CLEAR uid`.
pub const RECORD_NOTIFY_CLEAR: u16 = 7;

/// The fields of an event besides author, id and date.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct What {
    /// Type `1..=31`.
    pub kind: u8,
    /// The user who acted.
    pub user: i32,
    /// The group involved (VK: negative or 0).
    pub group: i32,
    /// The owner of the object.
    pub owner: i32,
    /// The place (album, wall, topic…).
    pub place: i32,
    /// The item.
    pub item: i32,
}

/// One update, as logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    /// A new event of `author`.
    EventAdd {
        /// The author.
        author: i32,
        /// What happened.
        what: What,
    },
    /// Drop an author.
    AuthorDel {
        /// The author.
        author: i32,
    },
    /// Set the types an author hides from friends.
    MaskSet {
        /// The author.
        author: i32,
        /// The mask (bit 0 always set).
        mask: u32,
    },
    /// A new notification for `user` (`what.group` unused).
    NotifyAdd {
        /// The recipient.
        user: i32,
        /// What happened.
        what: What,
    },
    /// Hide or show one notification.
    NotifyHide {
        /// The recipient.
        user: i32,
        /// The notification.
        id: u32,
        /// Show (else hide).
        show: bool,
    },
    /// Hide or show every notification from `from`.
    NotifyUserHide {
        /// The recipient.
        user: i32,
        /// The sender.
        from: i32,
        /// Show (else hide).
        show: bool,
    },
    /// Drop every notification of `user`.
    NotifyClear {
        /// The recipient.
        user: i32,
    },
}

fn put_i32(out: &mut Vec<u8>, v: i32) {
    put_u32(out, v as u32);
}

fn i32_of(r: &mut Reader<'_>) -> Result<i32> {
    Ok(r.u32()? as i32)
}

fn owner(r: &mut Reader<'_>) -> Result<i32> {
    let id = i32_of(r)?;
    if id == 0 || id == i32::MIN {
        return Err(Error::corrupt_record(format!("news: bad id {id}")));
    }
    Ok(id)
}

fn kind(r: &mut Reader<'_>) -> Result<u8> {
    let kind = r.u8()?;
    if kind == 0 || u32::from(kind) > TYPE_MAX {
        return Err(Error::corrupt_record(format!("news: bad type {kind}")));
    }
    Ok(kind)
}

impl Record {
    /// Decodes a logged record.
    ///
    /// # Errors
    /// [`Error::Corrupt`] for an unknown type or a malformed payload.
    pub fn decode(record_type: u16, payload: &[u8]) -> Result<Self> {
        let mut r = Reader::new(payload, "news record");
        let record = match record_type {
            RECORD_EVENT_ADD => Self::EventAdd {
                author: owner(&mut r)?,
                what: What {
                    kind: kind(&mut r)?,
                    user: i32_of(&mut r)?,
                    group: i32_of(&mut r)?,
                    owner: i32_of(&mut r)?,
                    place: i32_of(&mut r)?,
                    item: i32_of(&mut r)?,
                },
            },
            RECORD_AUTHOR_DEL => Self::AuthorDel {
                author: owner(&mut r)?,
            },
            RECORD_MASK_SET => Self::MaskSet {
                author: owner(&mut r)?,
                mask: r.u32()? | 1,
            },
            RECORD_NOTIFY_ADD => Self::NotifyAdd {
                user: owner(&mut r)?,
                what: What {
                    kind: kind(&mut r)?,
                    user: i32_of(&mut r)?,
                    group: 0,
                    owner: i32_of(&mut r)?,
                    place: i32_of(&mut r)?,
                    item: i32_of(&mut r)?,
                },
            },
            RECORD_NOTIFY_HIDE => Self::NotifyHide {
                user: owner(&mut r)?,
                id: r.u32()?,
                show: r.u8()? != 0,
            },
            RECORD_NOTIFY_USER_HIDE => Self::NotifyUserHide {
                user: owner(&mut r)?,
                from: owner(&mut r)?,
                show: r.u8()? != 0,
            },
            RECORD_NOTIFY_CLEAR => Self::NotifyClear {
                user: owner(&mut r)?,
            },
            other => return Err(Error::corrupt_record(format!("news: unknown type {other}"))),
        };
        r.finish()?;
        Ok(record)
    }

    /// The author or recipient whose partition the record touches.
    #[must_use]
    pub fn owner(&self) -> i32 {
        match *self {
            Self::EventAdd { author, .. }
            | Self::AuthorDel { author }
            | Self::MaskSet { author, .. } => author,
            Self::NotifyAdd { user, .. }
            | Self::NotifyHide { user, .. }
            | Self::NotifyUserHide { user, .. }
            | Self::NotifyClear { user } => user,
        }
    }
}

impl LogRecord for Record {
    fn record_type(&self) -> u16 {
        match self {
            Self::EventAdd { .. } => RECORD_EVENT_ADD,
            Self::AuthorDel { .. } => RECORD_AUTHOR_DEL,
            Self::MaskSet { .. } => RECORD_MASK_SET,
            Self::NotifyAdd { .. } => RECORD_NOTIFY_ADD,
            Self::NotifyHide { .. } => RECORD_NOTIFY_HIDE,
            Self::NotifyUserHide { .. } => RECORD_NOTIFY_USER_HIDE,
            Self::NotifyClear { .. } => RECORD_NOTIFY_CLEAR,
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        put_i32(out, self.owner());
        match *self {
            Self::EventAdd { what, .. } => {
                put_u8(out, what.kind);
                for v in [what.user, what.group, what.owner, what.place, what.item] {
                    put_i32(out, v);
                }
            }
            Self::NotifyAdd { what, .. } => {
                put_u8(out, what.kind);
                for v in [what.user, what.owner, what.place, what.item] {
                    put_i32(out, v);
                }
            }
            Self::MaskSet { mask, .. } => put_u32(out, mask),
            Self::NotifyHide { id, show, .. } => {
                put_u32(out, id);
                put_u8(out, u8::from(show));
            }
            Self::NotifyUserHide { from, show, .. } => {
                put_i32(out, from);
                put_u8(out, u8::from(show));
            }
            Self::AuthorDel { .. } | Self::NotifyClear { .. } => {}
        }
    }
}
