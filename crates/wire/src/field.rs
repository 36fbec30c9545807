//! The length-prefixed field: one encoding for every transcript, context and record, so
//! that distinct field lists never encode alike.

/// Appends a length-prefixed (u32, big-endian) field.
pub fn put(out: &mut Vec<u8>, f: &[u8]) {
    out.extend_from_slice(&(f.len() as u32).to_be_bytes());
    out.extend_from_slice(f);
}

/// Reads one field written by [`put`], or `None` if the input is cut short.
pub fn take<'a>(input: &mut &'a [u8]) -> Option<&'a [u8]> {
    if input.len() < 4 {
        return None;
    }
    let len = u32::from_be_bytes(input[..4].try_into().ok()?) as usize;
    let rest = &input[4..];
    if rest.len() < len {
        return None;
    }
    let (f, tail) = rest.split_at(len);
    *input = tail;
    Some(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_and_refuse_short_input() {
        let mut out = Vec::new();
        put(&mut out, b"ab");
        put(&mut out, b"");
        let mut input = out.as_slice();
        assert_eq!(take(&mut input), Some(&b"ab"[..]));
        assert_eq!(take(&mut input), Some(&b""[..]));
        assert_eq!(take(&mut input), None);
        let mut cut = &out[..5];
        assert_eq!(take(&mut cut), None);
    }
}
