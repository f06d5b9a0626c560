// @eyevinn/webrtc-player in its default mode (audio + video transceivers),
// WHEP adapter. unload() DELETEs the session, then closes the peer connection.
import { WebRTCPlayer } from '@eyevinn/webrtc-player';
import { expose, mediaElement } from './common.js';

expose('eyevinn', async (url, token, report) => {
  const video = mediaElement('video');
  // iceServers: [] instead of its default (Google's public STUN server): the
  // test stays on this machine, and gathering ends at once
  const player = new WebRTCPlayer({ video, type: 'whep', iceServers: [] });
  for (const event of ['no-media', 'media-recovered', 'peer-connection-failed',
                       'initial-connection-failed', 'connect-error']) {
    player.on(event, () => report(event));
  }
  // its authKey is the whole Authorization header
  await player.load(new URL(url), token ? `Bearer ${token}` : undefined);
  player.unmute();
  return {
    player, element: video,
    stream: () => video.srcObject,
    pc: () => player.peer,
    stop: () => player.unload(),
  };
});
