//! The vhost-user messages hvlite sends to a virtio-fs backend, behind [`Link`]:
//! [`FrontendLink`] sends them over the backend's Unix socket with the `vhost` crate's
//! frontend; tests record them instead.

use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;

use vhost::vhost_user::message::{VhostUserHeaderFlag, VhostUserProtocolFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vmm_sys_util::eventfd::EventFd;

/// A vhost-user message failed (the backend refused it, or its socket is gone).
#[derive(Debug, thiserror::Error)]
#[error("vhost-user {op} failed")]
pub struct LinkError {
    /// The message.
    pub op: &'static str,
    #[source]
    pub source: vhost::Error,
}

type Result<T> = std::result::Result<T, LinkError>;

/// The vhost-user requests a frontend makes.
pub trait Link: Send {
    fn get_features(&mut self) -> Result<u64>;
    fn set_features(&mut self, features: u64) -> Result<()>;
    fn set_owner(&mut self) -> Result<()>;
    fn get_protocol_features(&mut self) -> Result<u64>;
    fn set_protocol_features(&mut self, features: u64) -> Result<()>;
    fn set_mem_table(&mut self, regions: &[VhostUserMemoryRegionInfo]) -> Result<()>;
    fn set_vring_num(&mut self, queue: usize, num: u16) -> Result<()>;
    fn set_vring_addr(&mut self, queue: usize, addr: &VringConfigData) -> Result<()>;
    fn set_vring_base(&mut self, queue: usize, base: u16) -> Result<()>;
    fn set_vring_call(&mut self, queue: usize, fd: &EventFd) -> Result<()>;
    fn set_vring_kick(&mut self, queue: usize, fd: &EventFd) -> Result<()>;
    fn set_vring_enable(&mut self, queue: usize, enable: bool) -> Result<()>;
    /// Stops the vring and returns its next available index.
    fn get_vring_base(&mut self, queue: usize) -> Result<u32>;
    /// The socket, watched for the backend hanging up (`None` in tests).
    fn socket_fd(&self) -> Option<RawFd>;
}

/// A vhost-user connection to a backend's socket.
pub struct FrontendLink {
    frontend: Frontend,
}

fn err(op: &'static str) -> impl FnOnce(vhost::Error) -> LinkError {
    move |source| LinkError { op, source }
}

impl FrontendLink {
    /// Connects to the backend listening on `path`, serving `queues` queues.
    pub fn connect(path: &Path, queues: u64) -> Result<Self> {
        let frontend = Frontend::connect(path, queues).map_err(err("connect"))?;
        Ok(Self { frontend })
    }

    /// Asks the backend to acknowledge every request (REPLY_ACK), once it was negotiated.
    pub fn want_replies(&mut self) {
        self.frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
    }
}

impl Link for FrontendLink {
    fn get_features(&mut self) -> Result<u64> {
        self.frontend.get_features().map_err(err("GET_FEATURES"))
    }
    fn set_features(&mut self, features: u64) -> Result<()> {
        (self.frontend.set_features(features)).map_err(err("SET_FEATURES"))
    }
    fn set_owner(&mut self) -> Result<()> {
        self.frontend.set_owner().map_err(err("SET_OWNER"))
    }
    fn get_protocol_features(&mut self) -> Result<u64> {
        (self.frontend.get_protocol_features())
            .map(|f| f.bits())
            .map_err(err("GET_PROTOCOL_FEATURES"))
    }
    fn set_protocol_features(&mut self, features: u64) -> Result<()> {
        let features = VhostUserProtocolFeatures::from_bits_truncate(features);
        (self.frontend.set_protocol_features(features)).map_err(err("SET_PROTOCOL_FEATURES"))?;
        if features.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            self.want_replies();
        }
        Ok(())
    }
    fn set_mem_table(&mut self, regions: &[VhostUserMemoryRegionInfo]) -> Result<()> {
        (self.frontend.set_mem_table(regions))
            .map(drop)
            .map_err(err("SET_MEM_TABLE"))
    }
    fn set_vring_num(&mut self, queue: usize, num: u16) -> Result<()> {
        (self.frontend.set_vring_num(queue, num)).map_err(err("SET_VRING_NUM"))
    }
    fn set_vring_addr(&mut self, queue: usize, addr: &VringConfigData) -> Result<()> {
        (self.frontend.set_vring_addr(queue, addr)).map_err(err("SET_VRING_ADDR"))
    }
    fn set_vring_base(&mut self, queue: usize, base: u16) -> Result<()> {
        (self.frontend.set_vring_base(queue, base)).map_err(err("SET_VRING_BASE"))
    }
    fn set_vring_call(&mut self, queue: usize, fd: &EventFd) -> Result<()> {
        (self.frontend.set_vring_call(queue, fd)).map_err(err("SET_VRING_CALL"))
    }
    fn set_vring_kick(&mut self, queue: usize, fd: &EventFd) -> Result<()> {
        (self.frontend.set_vring_kick(queue, fd)).map_err(err("SET_VRING_KICK"))
    }
    fn set_vring_enable(&mut self, queue: usize, enable: bool) -> Result<()> {
        (self.frontend.set_vring_enable(queue, enable)).map_err(err("SET_VRING_ENABLE"))
    }
    fn get_vring_base(&mut self, queue: usize) -> Result<u32> {
        (self.frontend.get_vring_base(queue)).map_err(err("GET_VRING_BASE"))
    }
    fn socket_fd(&self) -> Option<RawFd> {
        Some(self.frontend.as_raw_fd())
    }
}
