import { WHEPClient } from 'whip-whep/whep.js';
import { exposeWhepClient } from './whipwhep.js';

exposeWhepClient('whip-whep', WHEPClient);
