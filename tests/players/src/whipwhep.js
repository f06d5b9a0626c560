// WHEPClient of a medooze whip-whep build (whip-whep, @binbat/whip-whep):
// the page brings the RTCPeerConnection and its transceivers (audio only,
// receive only) and plays the track; stop() closes the peer connection and
// DELETEs the session.
import { expose, mediaElement } from './common.js';

export function exposeWhepClient(name, WHEPClient) {
  expose(name, async (url, token, report) => {
    const audio = mediaElement('audio');
    const pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle' });
    pc.addTransceiver('audio', { direction: 'recvonly' });
    pc.ontrack = (evt) => { audio.srcObject = evt.streams[0] || new MediaStream([evt.track]); };
    pc.addEventListener('connectionstatechange', () => report(`connection ${pc.connectionState}`));
    const whep = new WHEPClient();
    try {
      await whep.view(pc, url, token);
    } catch (err) {
      report(`error: ${err}`);
    }
    return {
      player: whep, element: audio,
      stream: () => audio.srcObject,
      pc: () => pc,
      stop: () => whep.stop(),
    };
  });
}
