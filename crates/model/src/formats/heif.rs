//! HEIC and AVIF through libheif, opened at run time.
//!
//! Why `dlopen` rather than a `-sys` crate: libheif is a system library
//! (Debian's `libheif1`, which brings the HEVC and AV1 decoders), and a
//! machine without it must still build and run the daemon, with those two
//! formats refused by name. Linking at build time would make a missing
//! library a failed build or a binary that does not start.
//!
//! Only the dozen functions below are used; their signatures are those of
//! libheif 1.15's `heif.h` (Debian 12), unchanged in every later 1.x.
//! `INSTRUMENT_DETECTOR_LIBHEIF` names another file to open (a newer build,
//! or a path that does not exist, to see the daemon without it).

use super::check_alloc;
use crate::preprocess::{DecodeLimits, ImageError, check_dims, to_rgb8};
use image::{DynamicImage, RgbImage, RgbaImage};
use std::ffi::{CStr, c_char, c_int, c_void};
use std::sync::OnceLock;

/// The library opened by default: the soname of every libheif 1.x.
const DEFAULT_LIBRARY: &str = "libheif.so.1";
/// Overrides [`DEFAULT_LIBRARY`].
pub const LIBRARY_ENV: &str = "INSTRUMENT_DETECTOR_LIBHEIF";

// Values from heif.h.
const COLORSPACE_RGB: c_int = 1;
const CHROMA_INTERLEAVED_RGB: c_int = 10;
const CHROMA_INTERLEAVED_RGBA: c_int = 11;
const CHANNEL_INTERLEAVED: c_int = 10;
const ERROR_INVALID_INPUT: c_int = 2;
const ERROR_UNSUPPORTED_FILETYPE: c_int = 3;
const ERROR_UNSUPPORTED_FEATURE: c_int = 4;
const ERROR_MEMORY_ALLOCATION: c_int = 6;
const SUBERROR_END_OF_DATA: c_int = 100;
const SUBERROR_SECURITY_LIMIT_EXCEEDED: c_int = 1000;

/// `struct heif_error`, returned by value.
#[repr(C)]
#[derive(Clone, Copy)]
struct HeifError {
    code: c_int,
    subcode: c_int,
    message: *const c_char,
}

type Ctx = c_void;
type Handle = c_void;
type Image = c_void;

/// The functions we call, resolved once. The `Library` is kept so the
/// pointers stay valid for the life of the process.
struct Libheif {
    _library: libloading::Library,
    version: String,
    context_alloc: unsafe extern "C" fn() -> *mut Ctx,
    context_free: unsafe extern "C" fn(*mut Ctx),
    set_max_size: unsafe extern "C" fn(*mut Ctx, c_int),
    read_from_memory: unsafe extern "C" fn(*mut Ctx, *const c_void, usize, *const c_void) -> HeifError,
    primary_handle: unsafe extern "C" fn(*mut Ctx, *mut *mut Handle) -> HeifError,
    handle_width: unsafe extern "C" fn(*const Handle) -> c_int,
    handle_height: unsafe extern "C" fn(*const Handle) -> c_int,
    handle_has_alpha: unsafe extern "C" fn(*const Handle) -> c_int,
    handle_release: unsafe extern "C" fn(*const Handle),
    decode_image: unsafe extern "C" fn(*const Handle, *mut *mut Image, c_int, c_int, *const c_void) -> HeifError,
    image_width: unsafe extern "C" fn(*const Image, c_int) -> c_int,
    image_height: unsafe extern "C" fn(*const Image, c_int) -> c_int,
    image_bits: unsafe extern "C" fn(*const Image, c_int) -> c_int,
    plane: unsafe extern "C" fn(*const Image, c_int, *mut c_int) -> *const u8,
    image_release: unsafe extern "C" fn(*const Image),
}

/// Where libheif was looked for, and what happened.
fn library() -> Result<&'static Libheif, &'static str> {
    static LIB: OnceLock<Result<Libheif, String>> = OnceLock::new();
    LIB.get_or_init(open).as_ref().map_err(|e| e.as_str())
}

/// libheif's version, or why it cannot be used (for the start-up message).
pub fn availability() -> Result<String, String> {
    library().map(|l| l.version.clone()).map_err(str::to_string)
}

fn open() -> Result<Libheif, String> {
    let name = std::env::var(LIBRARY_ENV).unwrap_or_else(|_| DEFAULT_LIBRARY.to_string());
    // SAFETY: loading libheif runs its initialisers, which only set up its
    // codec plugins; it is a well-behaved C library.
    let library = unsafe { libloading::Library::new(&name) }.map_err(|e| {
        let why = std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string());
        format!("libheif could not be loaded ({why}); install it with `apt install libheif1`")
    })?;
    // SAFETY: each symbol is given the signature it has in heif.h.
    unsafe {
        macro_rules! sym {
            ($name:literal) => {
                *library.get($name).map_err(|e| format!("{name} is not a usable libheif: {e}"))?
            };
        }
        let get_version: unsafe extern "C" fn() -> *const c_char = sym!(b"heif_get_version\0");
        let init: unsafe extern "C" fn(*const c_void) -> HeifError = sym!(b"heif_init\0");
        // Registers the decoder plugins; reference counted and never undone,
        // since the library stays loaded until the process ends.
        init(std::ptr::null());
        let version = CStr::from_ptr(get_version()).to_string_lossy().into_owned();
        Ok(Libheif {
            version,
            context_alloc: sym!(b"heif_context_alloc\0"),
            context_free: sym!(b"heif_context_free\0"),
            set_max_size: sym!(b"heif_context_set_maximum_image_size_limit\0"),
            read_from_memory: sym!(b"heif_context_read_from_memory_without_copy\0"),
            primary_handle: sym!(b"heif_context_get_primary_image_handle\0"),
            handle_width: sym!(b"heif_image_handle_get_width\0"),
            handle_height: sym!(b"heif_image_handle_get_height\0"),
            handle_has_alpha: sym!(b"heif_image_handle_has_alpha_channel\0"),
            handle_release: sym!(b"heif_image_handle_release\0"),
            decode_image: sym!(b"heif_decode_image\0"),
            image_width: sym!(b"heif_image_get_width\0"),
            image_height: sym!(b"heif_image_get_height\0"),
            image_bits: sym!(b"heif_image_get_bits_per_pixel_range\0"),
            plane: sym!(b"heif_image_get_plane_readonly\0"),
            image_release: sym!(b"heif_image_release\0"),
            _library: library,
        })
    }
}

/// Owns one libheif object and releases it on every path out.
struct Owned<T> {
    ptr: *mut T,
    release: unsafe fn(&Libheif, *mut T),
    lib: &'static Libheif,
}

impl<T> Drop for Owned<T> {
    fn drop(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: `ptr` came from the matching libheif allocator and is
            // released exactly once.
            unsafe { (self.release)(self.lib, self.ptr) }
        }
    }
}

/// Decodes the primary image of a HEIF or AVIF file (`format` names it in
/// errors) to 8-bit RGB, with the file's rotation and mirroring applied.
pub(crate) fn decode(bytes: &[u8], format: &str, limits: &DecodeLimits) -> Result<RgbImage, ImageError> {
    let lib = library().map_err(|why| ImageError::Unsupported { format: format!("{format} ({why})") })?;
    // SAFETY: every pointer passed to libheif is either one it returned
    // (checked for null) or `bytes`, which outlives the context. libheif
    // reads the memory without copying it, so the context is dropped first.
    unsafe {
        let ctx = Owned { ptr: (lib.context_alloc)(), release: |l, p| (l.context_free)(p), lib };
        if ctx.ptr.is_null() {
            return Err(ImageError::OverDecoderLimit { limit: "no memory for a libheif context".into() });
        }
        // libheif's own guard against a header claiming a huge image.
        (lib.set_max_size)(ctx.ptr, limits.max_side.min(i32::MAX as u32) as c_int);
        check(format, (lib.read_from_memory)(ctx.ptr, bytes.as_ptr().cast(), bytes.len(), std::ptr::null()))?;
        let mut handle_ptr = std::ptr::null_mut();
        check(format, (lib.primary_handle)(ctx.ptr, &mut handle_ptr))?;
        let handle = Owned { ptr: handle_ptr, release: |l, p| (l.handle_release)(p), lib };
        // The size after rotation, from the header: checked before any pixel
        // memory is taken.
        let (w, h) = ((lib.handle_width)(handle.ptr), (lib.handle_height)(handle.ptr));
        let (w, h) = (w.max(0) as u32, h.max(0) as u32);
        check_dims(w, h, limits)?;
        let alpha = (lib.handle_has_alpha)(handle.ptr) != 0;
        check_alloc(w, h, if alpha { 4 } else { 3 }, limits)?;
        let chroma = if alpha { CHROMA_INTERLEAVED_RGBA } else { CHROMA_INTERLEAVED_RGB };
        let mut image_ptr = std::ptr::null_mut();
        // No decoding options: libheif's defaults apply the file's rotation
        // and mirroring and convert 10/12-bit content to the 8 bits asked for.
        check(format, (lib.decode_image)(handle.ptr, &mut image_ptr, COLORSPACE_RGB, chroma, std::ptr::null()))?;
        let image = Owned { ptr: image_ptr, release: |l, p| (l.image_release)(p), lib };
        copy_pixels(lib, image.ptr, alpha, format)
    }
}

/// The decoded interleaved plane, row by row (libheif pads rows to its stride).
///
/// # Safety
/// `image` is a live libheif image of interleaved RGB or RGBA.
unsafe fn copy_pixels(lib: &Libheif, image: *const Image, alpha: bool, format: &str) -> Result<RgbImage, ImageError> {
    let corrupt = |detail: String| ImageError::Corrupt { format: format.into(), detail };
    // SAFETY: the caller's contract; libheif returns the plane's geometry
    // and a pointer valid for `stride * height` bytes while `image` lives.
    unsafe {
        let bits = (lib.image_bits)(image, CHANNEL_INTERLEAVED);
        if bits != 8 {
            return Err(ImageError::Unsupported { format: format!("{format} (libheif gave {bits}-bit samples)") });
        }
        let (w, h) = ((lib.image_width)(image, CHANNEL_INTERLEAVED), (lib.image_height)(image, CHANNEL_INTERLEAVED));
        let mut stride: c_int = 0;
        let plane = (lib.plane)(image, CHANNEL_INTERLEAVED, &mut stride);
        let channels = if alpha { 4 } else { 3 };
        if plane.is_null() || w <= 0 || h <= 0 || (stride as i64) < w as i64 * channels {
            return Err(corrupt(format!("libheif returned no usable {w}x{h} plane")));
        }
        let (w, h, stride) = (w as usize, h as usize, stride as usize);
        let row_len = w * channels as usize;
        let mut pixels = Vec::with_capacity(row_len * h);
        for y in 0..h {
            pixels.extend_from_slice(std::slice::from_raw_parts(plane.add(y * stride), row_len));
        }
        let dynamic = if alpha {
            RgbaImage::from_raw(w as u32, h as u32, pixels).map(DynamicImage::ImageRgba8)
        } else {
            RgbImage::from_raw(w as u32, h as u32, pixels).map(DynamicImage::ImageRgb8)
        };
        dynamic.map(to_rgb8).ok_or_else(|| corrupt("short pixel buffer".into()))
    }
}

/// A libheif error as the crate's closed set of reasons.
fn check(format: &str, e: HeifError) -> Result<(), ImageError> {
    if e.code == 0 {
        return Ok(());
    }
    // SAFETY: libheif documents `message` as always set to a static string.
    let message = if e.message.is_null() {
        String::new()
    } else {
        unsafe { CStr::from_ptr(e.message) }.to_string_lossy().into_owned()
    };
    let detail = format!("{message} (libheif error {}.{})", e.code, e.subcode);
    Err(match (e.code, e.subcode) {
        (_, SUBERROR_SECURITY_LIMIT_EXCEEDED) | (ERROR_MEMORY_ALLOCATION, _) => {
            ImageError::OverDecoderLimit { limit: format!("libheif's limits: {message}") }
        }
        (ERROR_INVALID_INPUT, SUBERROR_END_OF_DATA) => ImageError::Truncated { format: format.into(), detail },
        (ERROR_UNSUPPORTED_FILETYPE | ERROR_UNSUPPORTED_FEATURE, _) => {
            ImageError::Unsupported { format: format!("{format} ({message})") }
        }
        _ => ImageError::Corrupt { format: format.into(), detail },
    })
}
