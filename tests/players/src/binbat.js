import { WHEPClient } from '@binbat/whip-whep/whep.js';
import { exposeWhepClient } from './whipwhep.js';

exposeWhepClient('binbat', WHEPClient);
