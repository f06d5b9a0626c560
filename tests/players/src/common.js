// What every bundle exposes: window.playWhep(url, token?) starts its player
// against a WHEP endpoint and resolves to a handle (also window.whep):
//   name       the player
//   element    the media element the player plays into (or null)
//   stream()   the MediaStream it plays (the element's srcObject, or the player's own)
//   pc()       its RTCPeerConnection (for diagnostics)
//   stop()     the player's own way to stop (see each player for what it sends)
//   events     what the player reported (errors, state changes), in order
export function expose(name, start) {
  window.playWhep = async (url, token) => {
    const events = [];
    const handle = await start(url, token, (what) => events.push(String(what)));
    handle.name = name;
    handle.events = events;
    window.whep = handle;
    return handle;
  };
}

// A playing media element in the page, as a player's host page would have.
export function mediaElement(tag) {
  const element = document.createElement(tag);
  element.autoplay = true;
  element.playsInline = true;
  document.body.appendChild(element);
  return element;
}
